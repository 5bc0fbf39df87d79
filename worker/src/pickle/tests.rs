use super::json_to_pickle;
use std::io::Write;
use std::process::{Command, Stdio};

fn pickled(json: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    json_to_pickle(json.as_bytes(), &mut out).then_some(out)
}

#[test]
fn values_become_the_opcodes_python_reads() {
    // pickle.dumps would memoize and frame; these are the bare opcodes of protocol 4.
    assert_eq!(pickled("null").unwrap(), b"\x80\x04N.");
    assert_eq!(pickled("[true,false]").unwrap(), b"\x80\x04](\x88\x89e.");
    assert_eq!(pickled("[]").unwrap(), b"\x80\x04].");
    assert_eq!(pickled("{}").unwrap(), b"\x80\x04}.");
    assert_eq!(
        pickled(r#"{"a":7}"#).unwrap(),
        b"\x80\x04}(\x8c\x01aK\x07u."
    );
    assert_eq!(pickled("300").unwrap(), b"\x80\x04M\x2c\x01.");
    assert_eq!(pickled("-1").unwrap(), b"\x80\x04J\xff\xff\xff\xff.");
    assert_eq!(
        pickled("18446744073709551615").unwrap(),
        b"\x80\x04\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00."
    );
    assert_eq!(
        pickled("1.5").unwrap(),
        b"\x80\x04G\x3f\xf8\x00\x00\x00\x00\x00\x00."
    );
    let long = "x".repeat(300);
    let mut expected = b"\x80\x04X\x2c\x01\x00\x00".to_vec();
    expected.extend_from_slice(long.as_bytes());
    expected.push(b'.');
    assert_eq!(pickled(&format!("\"{long}\"")).unwrap(), expected);
}

#[test]
fn declines_what_python_would_read_differently_or_not_at_all() {
    for json in [
        // Integers beyond 64 bits, and -0: Python's ints, serde_json's floats.
        "18446744073709551616",
        "-9223372036854775809",
        "[1, -0]",
        // Float literals that look the same to serde_json go as JSON too.
        "-0.0",
        "1e19",
        // Python accepts a lone surrogate escape; Rust strings cannot hold one.
        r#""\ud800""#,
        // Python's extensions and plain errors: the worker reports them.
        "NaN",
        "[1,",
        "[1] x",
        "\"\x01\"",
        "1e400",
        "",
    ] {
        assert!(pickled(json).is_none(), "{json:?} was pickled");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(
        pickled(&deep).is_none(),
        "a document deeper than serde_json's limit"
    );
    // Integral floats below 2^63 are ordinary floats.
    assert!(pickled("[-5.0, 1e18, 2.5e-300]").is_some());
}

/// Documents whose pickles Python must read as `json.loads` reads the JSON.
fn corpus() -> Vec<String> {
    let mut docs: Vec<String> = [
        r#"{"args": [1, 2.5, "three", null, true, false], "kwargs": {"k": [], "m": {}}}"#,
        r#"{"args": ["tab\tnew\nline \"q\" \\ \u00e9 \u2603 \ud83d\ude00 \u0000"]}"#,
        r#"{"a": 1, "a": 2, "b": [{"a": [[[]]]}]}"#,
        "  [0, 255, 256, 65535, 65536, 2147483647, 2147483648, -2147483648, -2147483649]  ",
        "[9223372036854775807, 9223372036854775808, 18446744073709551615, -9223372036854775808]",
        "[0.1, 1e-7, 1E+2, 5e-324, 1.7976931348623157e-308, -1.5, 2.2250738585072014e-308, 123.0]",
        "[\"\", \"é\", \"日本語\", \"\\/\"]",
        "\"plain\"",
        "3.14159",
    ]
    .iter()
    .map(|d| d.to_string())
    .collect();
    // Long and hard-to-round decimal floats: Python rounds them correctly, so must we.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut floats = Vec::new();
    for _ in 0..3000 {
        let bits = next();
        let f = f64::from_bits(bits);
        if f.is_finite() {
            floats.push(format!("{f:e}"));
        }
        let digits: String = (0..(next() % 25 + 1))
            .map(|_| char::from(b'0' + (next() % 10) as u8))
            .collect();
        let exponent = (next() % 600) as i64 - 300;
        floats.push(format!("0.{digits}e{exponent}"));
        floats.push(format!("{}.5", next() >> (next() % 64)));
    }
    // Integral ones beyond 2^63 are declined (tested above), so they are left out.
    floats.retain(|f| pickled(f).is_some());
    assert!(floats.len() > 4000, "{} floats", floats.len());
    docs.push(format!("[{}]", floats.join(",")));
    let big_string: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    docs.push(format!(r#"{{"args": ["{big_string}"]}}"#));
    docs
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn python_reads_each_pickle_as_json_loads_reads_its_json() {
    let docs = corpus();
    let mut lines = String::new();
    for doc in &docs {
        let pickle = pickled(doc).unwrap_or_else(|| panic!("{doc:.80} was declined"));
        lines.push_str(&format!("{} {}\n", hex(doc.as_bytes()), hex(&pickle)));
    }
    // Compared by type and repr at every level: 1 == 1.0 and 0.0 == -0.0 in Python.
    let check = r#"
import json, pickle, sys
def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return repr(a) == repr(b)
bad = 0
for n, line in enumerate(sys.stdin):
    j, p = (bytes.fromhex(h) for h in line.split())
    if not same(json.loads(j), pickle.loads(p)):
        bad += 1
        print("document %d differs: %.200r" % (n, j))
print("checked", n + 1, "bad", bad)
"#;
    let python = std::env::var("SCIFAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args(["-c", check])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("checked {} bad 0", docs.len())),
        "{report}"
    );
}
