//! The static check's view of a script: which host calls (state, sends, modules)
//! it can make, found by walking its AST before it runs.
//!
//! Rhai dispatches by name *and* number of arguments, and `x.f(a)` is `f(x, a)`. So
//! a call reaches a host function only when its arity is one the host registered:
//! `m.get("a")` is Rhai's map `get` (two arguments), never the state's `get(key)`.
//! The one name both share at one arity is `keys` with one argument: the state's
//! `keys(prefix)` and Rhai's map `keys()` as a method. There the receiver decides:
//! `"p/".keys()` (a string) is the state's, `m.keys()` (any other value) is not
//! counted, and the host call still meets the policy if it turns out to be one
//! (the runtime check: `keys` lists only what the caller may read).
//!
//! Function pointers are counted where they are made: `Fn("keys")` (which the
//! optimizer turns into a constant pointer, curried or not) counts as `keys`,
//! however it is called later (`call`, `.call`, `curry`, a map property). A pointer
//! made from a name computed at run time cannot be seen here; its calls meet the
//! policy at every host call, as every call does.

use rhai::{ASTNode, Dynamic, Expr, FnCallExpr, FnPtr, Stmt, AST};

use crate::script::Capability;

/// The host functions that need the policy's leave: name, arity, capability.
const HOST_CALLS: &[(&str, usize, Capability)] = &[
    ("get", 1, Capability::Read),
    ("keys", 0, Capability::Read),
    ("keys", 1, Capability::Read),
    ("set", 2, Capability::Write),
    ("remove", 1, Capability::Write),
    ("send", 2, Capability::Send),
    ("send", 3, Capability::Send),
];

/// Host calls whose name and arity Rhai's own packages also have (as methods on
/// values): `keys(map)`.
const SHARED_WITH_RHAI: &[(&str, usize)] = &[("keys", 1)];

/// The host calls a script can make, each capability once with the first
/// function found that needs it.
pub fn capabilities_used(ast: &AST) -> Vec<(Capability, &'static str)> {
    // A function the script defines itself is called instead of the host's of
    // the same name and arity.
    let own: Vec<(String, usize)> = ast
        .iter_functions()
        .map(|f| (f.name.to_string(), f.params.len()))
        .collect();
    let mut used: Vec<(Capability, &'static str)> = Vec::new();
    let mut add = |c: Capability, f: &'static str| {
        if !used.iter().any(|(u, _)| *u == c) {
            used.push((c, f));
        }
    };
    ast.walk(&mut |path: &[ASTNode]| {
        let host = |name: &str, arity: usize| {
            HOST_CALLS
                .iter()
                .find(|(n, a, _)| *n == name && *a == arity)
                .filter(|_| !own.iter().any(|(n, a)| n == name && *a == arity))
        };
        match path.last() {
            Some(ASTNode::Stmt(Stmt::Import(..))) => add(Capability::Import, "import"),
            Some(ASTNode::Expr(Expr::FnCall(f, _))) | Some(ASTNode::Stmt(Stmt::FnCall(f, _))) => {
                if let Some((n, _, c)) = host(&f.name, f.args.len()) {
                    add(*c, n);
                }
                for (n, c) in pointer_made(f, &own) {
                    add(c, n);
                }
            }
            Some(ASTNode::Expr(Expr::MethodCall(f, _))) => {
                let arity = f.args.len() + 1;
                if let Some((n, _, c)) = host(&f.name, arity) {
                    let shared = SHARED_WITH_RHAI.contains(&(*n, arity));
                    if !shared || receiver(path).is_some_and(is_string) {
                        add(*c, n);
                    }
                }
            }
            Some(ASTNode::Expr(Expr::DynamicConstant(v, _))) => {
                for (n, c) in pointers_in(v, &own) {
                    add(c, n);
                }
            }
            _ => {}
        }
        true
    });
    used
}

/// `Fn("name")` as the parser leaves it when the optimizer does not fold it.
fn pointer_made(f: &FnCallExpr, own: &[(String, usize)]) -> Vec<(&'static str, Capability)> {
    match (f.name.as_str(), &f.args[..]) {
        ("Fn", [Expr::StringConstant(s, _)]) => named(s, own),
        _ => Vec::new(),
    }
}

/// The host functions named by function pointers in a constant (a pointer, or
/// arrays and maps holding some), at any arity: a pointer can be curried.
fn pointers_in(v: &Dynamic, own: &[(String, usize)]) -> Vec<(&'static str, Capability)> {
    if let Some(p) = v.clone().try_cast::<FnPtr>() {
        let mut found = named(p.fn_name(), own);
        for c in p.iter_curry() {
            found.extend(pointers_in(c, own));
        }
        return found;
    }
    if let Some(a) = v.read_lock::<rhai::Array>() {
        return a.iter().flat_map(|x| pointers_in(x, own)).collect();
    }
    if let Some(m) = v.read_lock::<rhai::Map>() {
        return m.values().flat_map(|x| pointers_in(x, own)).collect();
    }
    Vec::new()
}

fn named(name: &str, own: &[(String, usize)]) -> Vec<(&'static str, Capability)> {
    if own.iter().any(|(n, _)| n == name) {
        return Vec::new();
    }
    HOST_CALLS
        .iter()
        .filter(|(n, ..)| *n == name)
        .map(|(n, _, c)| (*n, *c))
        .collect()
}

/// The value a method call at the end of `path` is called on, when the AST shows
/// it. Rhai nests a chain to the right: `r.a().b()` is `Dot(r, Dot(a(), b()))`,
/// so a call that is the left of its `Dot` takes its receiver from the `Dot`
/// above; and `x["i"].a()` is `Index(x, Dot("i", a()))`, where the `Dot`'s left
/// is an index, not the receiver (the element is not known here).
fn receiver<'a>(path: &[ASTNode<'a>]) -> Option<&'a Expr> {
    // The expressions from the innermost statement down to the call.
    let mut exprs: Vec<&'a Expr> = path
        .iter()
        .rev()
        .map_while(|n| match n {
            ASTNode::Expr(e) => Some(*e),
            _ => None,
        })
        .collect();
    exprs.reverse();
    let mut node = *exprs.last()?;
    for (i, parent) in exprs.iter().enumerate().rev().skip(1) {
        let Expr::Dot(d, ..) = parent else {
            return None;
        };
        if std::ptr::eq(&d.rhs, node) {
            let indexed = i > 0
                && matches!(exprs[i - 1], Expr::Index(x, ..) if std::ptr::eq(&x.rhs, *parent));
            return (!indexed).then_some(&d.lhs);
        }
        node = parent;
    }
    None
}

fn is_string(e: &Expr) -> bool {
    match e {
        Expr::StringConstant(..) | Expr::InterpolatedString(..) => true,
        Expr::DynamicConstant(v, _) => v.is_string(),
        _ => false,
    }
}

/// The row actions a script's `db.<table>.<op>(...)` calls ask for, each (action,
/// table) once: `get`, `find` and `count` select, the others are their own
/// action. A table reached otherwise (`let t = db.notes; t.insert(..)`) is not
/// seen here; its calls meet the policy at run time, as every call does.
pub fn row_calls_used(ast: &AST) -> Vec<(crate::script::RowAction, String)> {
    use crate::script::RowAction;
    let mut used: Vec<(RowAction, String)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(Expr::Dot(outer, ..))) = path.last() else {
            return true;
        };
        let Expr::Variable(v, ..) = &outer.lhs else {
            return true;
        };
        if v.1.as_str() != "db" {
            return true;
        }
        let Expr::Dot(inner, ..) = &outer.rhs else {
            return true;
        };
        let (Expr::Property(p, _), Expr::MethodCall(f, _)) = (&inner.lhs, &inner.rhs) else {
            return true;
        };
        let action = match f.name.as_str() {
            "get" | "find" | "count" => RowAction::Select,
            "insert" => RowAction::Insert,
            "update" => RowAction::Update,
            "delete" => RowAction::Delete,
            _ => return true,
        };
        let table = p.2.to_string();
        if !used.iter().any(|(a, t)| *a == action && *t == table) {
            used.push((action, table));
        }
        true
    });
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(src: &str) -> Vec<&'static str> {
        let ast = rhai::Engine::new().compile(src).unwrap();
        let mut v: Vec<&str> = capabilities_used(&ast)
            .into_iter()
            .map(|(c, _)| c.as_str())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rhai_methods_on_values_are_not_state_access() {
        for src in [
            "let m = #{a: 1, b: 2}; m.keys().len()",
            "let m = #{a: 1}; m.get(\"a\"); m.set(\"a\", 2); m.remove(\"a\"); m.values()",
            "let a = [1, 2]; a.get(0); a.set(0, 1); a.remove(0); a.len()",
            "let s = \"abc\"; s.len(); s.get(0); s.remove(\"a\"); s.set(0, 'x')",
            "#{a: 1}.keys()",
            "let m = #{a: #{b: 1}}; m.a.keys(); m[\"a\"].keys().len()",
            "let m = #{a: 1}; get(m, \"a\"); set(m, \"a\", 1); remove(m, \"a\"); keys(m).len()",
            "fn get(k) { k } fn set(k, v) { v } get(1); set(1, 2); Fn(\"get\").call(3)",
        ] {
            // keys(m) as a plain call is the state's keys(prefix) by its arity:
            // only the method form on a non-string is Rhai's for certain.
            let want: &[&str] = if src.contains("keys(m)") {
                &["read"]
            } else {
                &[]
            };
            assert_eq!(used(src), want, "{src}");
        }
    }

    #[test]
    fn state_functions_count_however_they_are_called() {
        for (src, want) in [
            (r#"get("k")"#, &["read"][..]),
            (r#"keys()"#, &["read"]),
            (r#"keys("a/").len()"#, &["read"]),
            (r#""a/".keys()"#, &["read"]),
            (r#""a/".keys().len()"#, &["read"]),
            (r#"let p = "a"; `${p}/`.keys()"#, &["read"]),
            (r#""k".get()"#, &["read"]),
            (r#"let k = "k"; k.get()"#, &["read"]),
            (r#"let k = "k"; k.set(1); k.remove()"#, &["write"]),
            (r#"set("k", 1)"#, &["write"]),
            (r#"remove("k")"#, &["write"]),
            (r#"send("bob", "1")"#, &["send"]),
            (r#""bob".send("1", #{})"#, &["send"]),
            (r#"import "m" as m;"#, &["import"]),
            (r#"fn f() { set("k", 1) } 1"#, &["write"]),
            (r#"let f = || keys(); f.call()"#, &["read"]),
            (r#"Fn("keys").call("")"#, &["read"]),
            (r#"call(Fn("get"), "k")"#, &["read"]),
            (r#"let f = Fn("set"); f.call("k", 1)"#, &["write"]),
            (r#"Fn("set").curry("k").call(1)"#, &["write"]),
            (r#"let m = #{ f: Fn("send") }; m.f("bob", "1")"#, &["send"]),
            (r#"[Fn("remove")][0].call("k")"#, &["write"]),
        ] {
            assert_eq!(used(src), want, "{src}");
        }
    }

    #[test]
    fn unoptimized_pointers_count_too() {
        let mut e = rhai::Engine::new();
        e.set_optimization_level(rhai::OptimizationLevel::None);
        let ast = e.compile(r#"Fn("keys").call("")"#).unwrap();
        let caps: Vec<_> = capabilities_used(&ast).into_iter().map(|c| c.0).collect();
        assert_eq!(caps, [Capability::Read]);
    }
}
