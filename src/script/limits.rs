//! Sandbox limits: every limit a run has, in one table with its defaults for a
//! peer's own scripts and for other peers' and the largest value the config file
//! accepts. The same type, with `Option<u64>` fields, is what a policy's `@max_*`
//! annotations set (`None`: that limit is left alone).

use serde::{Deserialize, Deserializer};

/// Why a limit stops at 1 GiB: what it bounds lives in memory and in one row.
const IN_ONE_ROW: &str = "1 GiB: values live in memory and in one SQLite row";
const NO_RUN_NEEDS_MORE: &str = "no run needs more";

macro_rules! limits {
    ($(
        $(#[$doc:meta])*
        $name:ident ($check:literal): others $others:expr, own $own:expr, ceiling $max:expr, $why:expr;
    )*) => {
        /// Sandbox limits for one run. The daemon's config holds two sets of defaults:
        /// [`Limits::own`] for a peer's own scripts and [`Limits::others`] for scripts
        /// other peers send it (which the target's policy can only make tighter).
        ///
        /// Every field is a key of the config file's `[limits.own]` and
        /// `[limits.others]` tables; a value outside `1..=` [`Limits::ceiling`] is
        /// refused at start. `Limits<Option<u64>>` is a tightening (see
        /// [`Limits::tightened`]).
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(
            default,
            deny_unknown_fields,
            bound(deserialize = "T: Bounded, Limits<T>: Default")
        )]
        pub struct Limits<T = u64> {
            $(
                $(#[$doc])*
                #[serde(deserialize_with = $check)]
                pub $name: T,
            )*
        }

        /// How many limits there are.
        const COUNT: usize = [$(stringify!($name)),*].len();

        impl Limits {
            /// Defaults for scripts other peers send: tight, so that a hostile sender
            /// costs its target little.
            pub fn others() -> Limits {
                Limits { $($name: $others,)* }
            }

            /// Defaults for a peer's own scripts: room for ordinary programs (loops
            /// over millions of elements, arrays and maps of millions of entries,
            /// seconds of CPU). The owner only spends its own runner time.
            pub fn own() -> Limits {
                Limits { $($name: $own,)* }
            }

            /// The largest value each limit accepts, and why. The depth limits are
            /// bounded by the runner threads' 64 MiB stacks: past them a deep script
            /// would crash the daemon instead of ending with `limit`.
            pub fn ceiling(name: &str) -> Option<(u64, &'static str)> {
                Some(match name {
                    $(stringify!($name) => ($max, $why),)*
                    _ => return None,
                })
            }
        }

        impl<T> Limits<T> {
            /// Every limit's name, in field order.
            pub const NAMES: [&'static str; COUNT] = [$(stringify!($name)),*];

            /// Every limit, by name, in field order.
            pub fn fields(&self) -> [(&'static str, &T); COUNT] {
                [$((stringify!($name), &self.$name)),*]
            }

            /// The limit called `name`, to change it.
            pub fn field_mut(&mut self, name: &str) -> Option<&mut T> {
                match name {
                    $(stringify!($name) => Some(&mut self.$name),)*
                    _ => None,
                }
            }

            /// Every limit set to `v`.
            pub fn splat(v: T) -> Limits<T>
            where
                T: Clone,
            {
                Limits { $($name: v.clone(),)* }
            }

            /// Field by field: `f` of this set's limit and `o`'s.
            fn zip<U, V>(&self, o: &Limits<U>, f: impl Fn(&T, &U) -> V) -> Limits<V> {
                Limits { $($name: f(&self.$name, &o.$name),)* }
            }
        }

        /// Range-checked deserializers for [`Limits`]: a bad value is refused where
        /// it is read, so the config file's error names its line.
        mod bounded {
            use serde::Deserializer;
            $(
                pub(super) fn $name<'de, D: Deserializer<'de>, T: super::Bounded>(
                    d: D,
                ) -> Result<T, D::Error> {
                    super::check(d, stringify!($name)).map(T::from_checked)
                }
            )*
        }
    };
}

limits! {
    max_operations("bounded::max_operations"):
        others 1_000_000, own 500_000_000, ceiling 1 << 50, NO_RUN_NEEDS_MORE;
    max_wall_ms("bounded::max_wall_ms"):
        others 2_000, own 10_000, ceiling 86_400_000, "one day";
    max_call_levels("bounded::max_call_levels"):
        others 64, own 256, ceiling 1_000,
        "deeper recursion would overflow a runner thread's 64 MiB stack";
    max_expr_depth("bounded::max_expr_depth"):
        others 64, own 128, ceiling 1_000,
        "deeper nesting would overflow a runner thread's 64 MiB stack while compiling";
    /// Longest string (bytes) one step may make (`pad`) and that a run may return,
    /// store or send; strings a script builds step by step are bounded by
    /// `max_memory_bytes`.
    max_string_size("bounded::max_string_size"):
        others 1 << 20, own 64 << 20, ceiling 1 << 30, IN_ONE_ROW;
    /// Most elements of an array or bytes of a BLOB one step may make (`pad`,
    /// `blob(n)`), and of the arrays in a value a run returns, stores or sends.
    max_array_size("bounded::max_array_size"):
        others 10_000, own 4_000_000, ceiling 1 << 30, NO_RUN_NEEDS_MORE;
    /// Most entries of the maps in a value a run returns, stores or sends.
    max_map_size("bounded::max_map_size"):
        others 10_000, own 4_000_000, ceiling 1 << 30, NO_RUN_NEEDS_MORE;
    /// Most bytes a run may hold allocated at once (its thread's allocations less
    /// what it freed, counted from the run's start), checked at every operation
    /// and before a step that would make a big value at once.
    max_memory_bytes("bounded::max_memory_bytes"):
        others 8 << 20, own 256 << 20, ceiling 1 << 36, "64 GiB: more than a runner should hold";
    max_output_bytes("bounded::max_output_bytes"):
        others 64 << 10, own 16 << 20, ceiling 1 << 30, IN_ONE_ROW;
    max_sends("bounded::max_sends"):
        others 100, own 10_000, ceiling 1_000_000, NO_RUN_NEEDS_MORE;
    max_script_bytes("bounded::max_script_bytes"):
        others 1 << 20, own 16 << 20, ceiling 1 << 30, "1 GiB: scripts are held in memory";
    max_modules("bounded::max_modules"):
        others 32, own 1024, ceiling 100_000, NO_RUN_NEEDS_MORE;
    /// Most sends in a chain (alice -> bob -> carol ...): bounds cycles.
    hop_limit("bounded::hop_limit"):
        others 16, own 16, ceiling 1_000, "longer chains are cycles";
    /// Largest value one `set` may store (its JSON encoding, in bytes), and the
    /// largest state file the owner may write through the mount.
    max_value_bytes("bounded::max_value_bytes"):
        others 1 << 20, own 64 << 20, ceiling 1 << 30, IN_ONE_ROW;
}

impl Default for Limits {
    /// The tight set: what other peers' scripts get.
    fn default() -> Limits {
        Limits::others()
    }
}

impl Default for Limits<Option<u64>> {
    /// No limit set.
    fn default() -> Self {
        Limits::splat(None)
    }
}

impl Limits {
    /// The tighter of two limit sets, field by field.
    pub fn min(&self, o: &Limits) -> Limits {
        self.zip(o, |a, b| *a.min(b))
    }

    /// These limits, each made tighter where `by` sets it.
    pub fn tightened(&self, by: &Limits<Option<u64>>) -> Limits {
        self.zip(by, |a, b| b.map_or(*a, |b| b.min(*a)))
    }
}

impl Limits<Option<u64>> {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// Per-field minimum; a `None` side does not constrain.
    pub fn min(&self, o: &Self) -> Self {
        self.zip(o, |a, b| match (*a, *b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        })
    }
}

/// The field types a limit set is read into from the config file.
pub trait Bounded {
    fn from_checked(v: u64) -> Self;
}

impl Bounded for u64 {
    fn from_checked(v: u64) -> u64 {
        v
    }
}

/// A limit read from the config file: from 1 to its [`Limits::ceiling`].
fn check<'de, D: Deserializer<'de>>(d: D, name: &str) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    let (max, why) = Limits::ceiling(name).expect("every limit has a ceiling");
    if v == 0 {
        return Err(serde::de::Error::custom(format!(
            "{name} = 0 would refuse every run: use a value from 1 to {max}"
        )));
    }
    if v > max {
        return Err(serde::de::Error::custom(format!(
            "{name} = {v} is above {max} ({why}): use a value from 1 to {max}"
        )));
    }
    Ok(v)
}

/// A message naming the size limit `v` is over (arrays' elements, maps' entries and
/// strings' bytes each counted over the whole value, as Rhai counts them), or
/// `None`.
pub(super) fn size_error(
    v: &serde_json::Value,
    what: &str,
    max_array: u64,
    max_map: u64,
    max_string: u64,
) -> Option<String> {
    let (mut arrays, mut maps, mut strings) = (0u64, 0u64, 0u64);
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(a) => {
                arrays += a.len() as u64;
                stack.extend(a.iter());
            }
            serde_json::Value::Object(o) => {
                maps += o.len() as u64;
                stack.extend(o.values());
            }
            serde_json::Value::String(s) => strings += s.len() as u64,
            _ => {}
        }
    }
    let over = |name: &str, max: u64, n: u64, unit: &str| {
        (n > max).then(|| format!("{name} ({max}) reached: {what} holds {n} {unit}"))
    };
    over("max_string_size", max_string, strings, "bytes of strings")
        .or_else(|| over("max_array_size", max_array, arrays, "array elements"))
        .or_else(|| over("max_map_size", max_map, maps, "map entries"))
}
