//! Value sizes without Rhai's per-change recount: the steps that make a value of a
//! size the script gives them (`pad`, `blob(n)`) check it first, and a value that
//! leaves a run (returned, stored, sent) is measured once.
//!
//! Rhai's own `set_max_string_size`/`array`/`map` limits are left unset: with any
//! of them set, Rhai measures the whole of a value after every change to it, so a
//! script pushing a million numbers into an array made half a million million
//! element visits. Memory is bounded instead by `max_memory_bytes` (see `alloc`).
//! The functions below replace Rhai's own of the same signatures (functions
//! registered on the engine come before its packages), with the checks Rhai made
//! before allocating moved to `host::reserve`.

use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult, ImmutableString, INT};

use super::host::{reserve, Making};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Bytes one copy of `v` takes: its slot in an array and what it owns.
fn bytes_of(v: &Dynamic) -> u64 {
    let slot = std::mem::size_of::<Dynamic>() as u64;
    if let Some(s) = v.read_lock::<ImmutableString>() {
        return slot + s.len() as u64;
    }
    if let Some(b) = v.read_lock::<Blob>() {
        return slot + b.len() as u64;
    }
    if let Some(a) = v.read_lock::<Array>() {
        return slot + a.iter().map(bytes_of).sum::<u64>();
    }
    if let Some(m) = v.read_lock::<rhai::Map>() {
        return slot
            + m.iter()
                .map(|(k, v)| k.len() as u64 + bytes_of(v))
                .sum::<u64>();
    }
    slot
}

/// How many more characters a pad to `len` adds to `s` (0: none).
fn pad_count(s: &str, len: INT) -> (u64, u64) {
    let len = u64::try_from(len).unwrap_or(0);
    let have = s.chars().count() as u64;
    (len, len.saturating_sub(have))
}

fn pad_char(s: &mut ImmutableString, len: INT, c: char) -> RhaiResult<()> {
    let (len, more) = pad_count(s, len);
    if more == 0 {
        return Ok(());
    }
    reserve(
        Making::String,
        len,
        more.saturating_mul(c.len_utf8() as u64),
    )?;
    let p = s.make_mut();
    p.extend(std::iter::repeat_n(c, more as usize));
    Ok(())
}

fn pad_str(s: &mut ImmutableString, len: INT, padding: &str) -> RhaiResult<()> {
    let (len, more) = pad_count(s, len);
    if more == 0 || padding.is_empty() {
        return Ok(());
    }
    // Each added character is at most 4 bytes.
    reserve(Making::String, len, more.saturating_mul(4))?;
    let p = s.make_mut();
    p.extend(padding.chars().cycle().take(more as usize));
    Ok(())
}

fn pad_array(a: &mut Array, len: INT, item: Dynamic) -> RhaiResult<()> {
    let len = u64::try_from(len).unwrap_or(0);
    let more = len.saturating_sub(a.len() as u64);
    if more == 0 {
        return Ok(());
    }
    reserve(Making::Array, len, more.saturating_mul(bytes_of(&item)))?;
    a.resize(len as usize, item);
    Ok(())
}

fn pad_blob(b: &mut Blob, len: INT, value: INT) -> RhaiResult<()> {
    let len = u64::try_from(len).unwrap_or(0);
    let more = len.saturating_sub(b.len() as u64);
    if more == 0 {
        return Ok(());
    }
    reserve(Making::Array, len, more)?;
    b.resize(len as usize, (value & 0xff) as u8);
    Ok(())
}

fn blob_of(len: INT, value: INT) -> RhaiResult<Blob> {
    let len = u64::try_from(len).unwrap_or(0);
    reserve(Making::Array, len, len)?;
    Ok(vec![(value & 0xff) as u8; len as usize])
}

pub(super) fn register(engine: &mut Engine) {
    engine.register_fn("pad", pad_char);
    engine.register_fn("pad", pad_str);
    engine.register_fn("pad", pad_array);
    engine.register_fn("pad", pad_blob);
    engine.register_fn("blob", |len: INT| blob_of(len, 0));
    engine.register_fn("blob", blob_of);
}
