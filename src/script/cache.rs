//! Compiled scripts, cached by content hash (and the parse limits they were built under).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use rhai::{Engine, ParseError, AST};

/// Most entries kept by default; past the most the cache starts over (cheap, and
/// bounded). Config key `script_cache_entries`.
pub const MAX_ENTRIES: usize = 4096;

/// (content hash, max expression depth) -> (source, compiled script).
type Entries = HashMap<(u64, usize), (Arc<str>, Arc<AST>)>;

pub struct AstCache {
    map: Mutex<Entries>,
    max: usize,
}

impl Default for AstCache {
    fn default() -> AstCache {
        AstCache::with_capacity(MAX_ENTRIES)
    }
}

impl AstCache {
    pub fn new() -> AstCache {
        AstCache::default()
    }

    /// A cache of at most `max` compiled scripts (at least 1).
    pub fn with_capacity(max: usize) -> AstCache {
        AstCache {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    pub fn compile(&self, engine: &Engine, text: &str) -> Result<Arc<AST>, ParseError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        let key = (h.finish(), engine.max_expr_depth());
        if let Some((src, ast)) = self.map.lock().unwrap().get(&key) {
            if &**src == text {
                return Ok(ast.clone());
            }
        }
        let ast = Arc::new(engine.compile(text)?);
        let mut map = self.map.lock().unwrap();
        if map.len() >= self.max {
            map.clear();
        }
        map.insert(key, (Arc::from(text), ast.clone()));
        Ok(ast)
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
