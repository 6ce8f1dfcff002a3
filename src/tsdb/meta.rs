//! A block's `meta.json` (prometheus `tsdb/block.go` BlockMeta). Parsed typed for the fields
//! promigrate uses, and compared as JSON values field by field so nothing is missed.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

/// The fields of `meta.json` that promigrate reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    /// Must equal the block directory's name.
    pub ulid: Ulid,
    /// Inclusive start (ms since epoch).
    pub min_time: i64,
    /// Exclusive end (ms since epoch).
    pub max_time: i64,
    /// Format version; Prometheus writes 1.
    pub version: u32,
    /// Counts.
    #[serde(default)]
    pub stats: BlockStats,
    /// Compaction history.
    #[serde(default)]
    pub compaction: Compaction,
}

/// `meta.json` `stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    /// Samples of all kinds.
    #[serde(default)]
    pub num_samples: u64,
    /// Series.
    #[serde(default)]
    pub num_series: u64,
    /// Chunks.
    #[serde(default)]
    pub num_chunks: u64,
    /// Tombstones.
    #[serde(default)]
    pub num_tombstones: u64,
}

/// `meta.json` `compaction`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Compaction {
    /// 1 for a block cut from the head (or made by promtool), higher once compacted.
    #[serde(default)]
    pub level: u32,
    /// The blocks this one was compacted from (they are deleted once it exists).
    #[serde(default)]
    pub parents: Vec<Parent>,
    /// The level-1 blocks whose data this one holds.
    #[serde(default)]
    pub sources: Vec<Ulid>,
}

/// One `compaction.parents` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Parent {
    /// The parent block's ULID.
    pub ulid: Ulid,
}

impl BlockMeta {
    /// Parses meta.json bytes.
    pub fn parse(bytes: &[u8]) -> Result<(BlockMeta, Value), String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let meta: BlockMeta = serde_json::from_value(value.clone())
            .map_err(|e| format!("not a block meta.json: {e}"))?;
        Ok((meta, value))
    }
}

/// Compares two parsed meta.json documents field by field and describes every difference
/// as `path: source → target`.
pub fn diff_fields(source: &Value, target: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", source, target, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let child = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                walk(&child(k), va, vb, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!(
            "{}: {} → {}",
            if path.is_empty() { "(document)" } else { path },
            a,
            b
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_by_field() {
        let a: Value =
            serde_json::json!({"ulid":"X","stats":{"numSamples":10,"numSeries":2},"version":1});
        let b: Value = serde_json::json!({"ulid":"X","stats":{"numSamples":12,"numSeries":2},"version":1,"extra":true});
        let d = diff_fields(&a, &b);
        assert_eq!(
            d,
            vec![
                "extra: null → true".to_string(),
                "stats.numSamples: 10 → 12".to_string()
            ]
        );
        assert!(diff_fields(&a, &a).is_empty());
    }

    #[test]
    fn parses_real_shape() {
        let raw = br#"{"ulid":"01HZX3J8Q4N2V5W6X7Y8Z9A0BC","minTime":1,"maxTime":7200001,
          "stats":{"numSamples":120,"numSeries":1,"numChunks":1},
          "compaction":{"level":1,"sources":["01HZX3J8Q4N2V5W6X7Y8Z9A0BC"]},"version":1}"#;
        let (m, _) = BlockMeta::parse(raw).unwrap();
        assert_eq!(m.stats.num_samples, 120);
        assert_eq!(m.compaction.level, 1);
        assert!(BlockMeta::parse(b"{").unwrap_err().contains("JSON"));
        assert!(BlockMeta::parse(b"{}").unwrap_err().contains("meta.json"));
    }
}
