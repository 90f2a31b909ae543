//! How state values become file bytes and back: parsing any bytes never panics, a
//! rendered non-string value parses back to itself, and text that is not JSON is kept
//! as a string (less one trailing newline).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use peerfs::store::value::{parse_file, render};
use serde_json::Value;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_file(data);
    // Whatever was written reads back as something that renders without panicking.
    let bytes = render(&parsed);
    match std::str::from_utf8(data) {
        Ok(text) => {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                assert_eq!(parsed, v);
            } else {
                let t = text.strip_suffix('\n').unwrap_or(text);
                let t = t.strip_suffix('\r').unwrap_or(t);
                assert_eq!(parsed, Value::String(t.to_string()));
                assert_eq!(bytes, t.as_bytes());
            }
        }
        Err(_) => {
            assert_eq!(
                parsed,
                Value::String(String::from_utf8_lossy(data).into_owned())
            );
        }
    }

    // The input as a JSON value: anything but a string must survive render + parse.
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let rendered = render(&v);
        match &v {
            Value::String(s) => assert_eq!(rendered, s.as_bytes()),
            _ => {
                assert_eq!(rendered.last(), Some(&b'\n'), "{v:?}");
                assert_eq!(
                    parse_file(&rendered),
                    v,
                    "rendered as {:?}",
                    String::from_utf8_lossy(&rendered)
                );
                if depth(&v) >= 100 {
                    return; // wrapping could pass serde_json's nesting limit (128)
                }
                // Wrapped in an array and an object too (the shapes scripts store).
                let arr = Value::Array(vec![v.clone(), Value::Null]);
                assert_eq!(parse_file(&render(&arr)), arr);
                let mut m = serde_json::Map::new();
                m.insert("k".into(), v.clone());
                let obj = Value::Object(m);
                assert_eq!(parse_file(&render(&obj)), obj);
            }
        }
    }
});
