//! safetensors headers: parsed and checked before any worker sees a file, and rewritten
//! with every tensor's data aligned to 16 KiB (so that on Apple silicon a worker can adopt
//! tensors straight from the mapping).
//!
//! Layout: u64 little-endian header length N, N bytes of JSON
//! `{"__metadata__": {..}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}}`,
//! then the data section; offsets are relative to the start of the data section.
//!
//! Each entry is read by the `safetensors` crate's own header types ([`StTensorInfo`],
//! [`Dtype`]), so the schema (field names, dtype names, integer types) is the reference
//! implementation's. Its whole-file reader, `SafeTensors::read_metadata`, is not used: it
//! enforces the format's rule that tensors are contiguous from offset 0 and end exactly at
//! the end of the file, and the files this module writes have zero padding between tensors
//! to align each to 16 KiB, so it would refuse almost every file in the store. The framing
//! (length prefix, size limit) and the checks below are ours; a refused entry is named.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ::safetensors::tensor::TensorInfo as StTensorInfo;
use ::safetensors::Dtype;
use serde::Deserialize;

/// Largest header accepted (real ones are kilobytes to a few megabytes).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Tensor data alignment in files the store writes.
pub const ALIGNMENT: u64 = 16 * 1024;

/// Why a header was refused; every message names the tensor where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("file is {0} bytes, too short for a safetensors header")]
    TooShort(u64),
    #[error("header of {len} bytes overruns the file of {file_len} bytes")]
    HeaderOverrun { len: u64, file_len: u64 },
    #[error("header of {0} bytes exceeds the {MAX_HEADER_LEN}-byte limit")]
    HeaderTooLarge(u64),
    #[error("header is not valid JSON: {0}")]
    Json(String),
    #[error("tensor {tensor:?}: {problem}")]
    Tensor { tensor: String, problem: String },
    #[error("tensors {first:?} and {second:?} overlap")]
    Overlap { first: String, second: String },
}

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range within the data section.
    pub begin: u64,
    pub end: u64,
}

/// A checked header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Bytes before the data section (8 + header length).
    pub data_start: u64,
    pub metadata: BTreeMap<String, String>,
    /// Sorted by `begin`.
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    /// Whether every tensor's absolute file offset is a multiple of `ALIGNMENT`.
    pub fn is_aligned(&self) -> bool {
        self.tensors.iter().all(|t| (self.data_start + t.begin).is_multiple_of(ALIGNMENT))
    }

    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.end - t.begin).sum()
    }
}

/// Bytes per element of the dtypes MLX can load; `None` for the rest.
pub fn dtype_size(dtype: Dtype) -> Option<u64> {
    Some(match dtype {
        Dtype::BOOL | Dtype::U8 | Dtype::I8 => 1,
        Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
        Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
        Dtype::U64 | Dtype::I64 => 8,
        _ => return None,
    })
}

/// Parses and checks the header of a safetensors file held in `bytes` (the whole file, or
/// a mapping of it): header within the file, every tensor's range inside the data section
/// and matching its dtype and shape, no two ranges overlapping, only loadable dtypes.
pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    let file_len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else { return Err(HeaderError::TooShort(file_len)) };
    let len = u64::from_le_bytes(prefix.try_into().map_err(|_| HeaderError::TooShort(file_len))?);
    if len > MAX_HEADER_LEN {
        return Err(HeaderError::HeaderTooLarge(len));
    }
    if len > file_len - 8 {
        return Err(HeaderError::HeaderOverrun { len, file_len });
    }
    let data_start = 8 + len;
    let data_len = file_len - data_start;
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start as usize]).map_err(|e| HeaderError::Json(e.to_string()))?;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        let bad = |problem: String| HeaderError::Tensor { tensor: name.clone(), problem };
        if name == "__metadata__" {
            // MLX's `save_safetensors` without metadata writes `null`: no metadata.
            if !entry.is_null() {
                metadata = BTreeMap::<String, String>::deserialize(&entry).map_err(|e| bad(e.to_string()))?;
            }
            continue;
        }
        let StTensorInfo { dtype, shape, data_offsets: (begin, end) } =
            StTensorInfo::deserialize(&entry).map_err(|e| bad(e.to_string()))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(format!("dtype {dtype} is not supported by the runtime")))?;
        let shape: Vec<u64> = shape.into_iter().map(|d| d as u64).collect();
        let (begin, end) = (begin as u64, end as u64);
        if begin > end || end > data_len {
            return Err(bad(format!("bytes {begin}..{end} fall outside the {data_len}-byte data section")));
        }
        let elements = shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
        let expected = elements.and_then(|n| n.checked_mul(size));
        if expected != Some(end - begin) {
            return Err(bad(format!(
                "shape {shape:?} of {dtype} needs {} bytes but its range holds {}",
                expected.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                end - begin
            )));
        }
        tensors.push(TensorInfo { name, dtype: dtype.to_string(), shape, begin, end });
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    for pair in tensors.windows(2) {
        if pair[1].begin < pair[0].end {
            return Err(HeaderError::Overlap { first: pair[0].name.clone(), second: pair[1].name.clone() });
        }
    }
    Ok(Header { data_start, metadata, tensors })
}

/// Writes `bytes` (a checked safetensors file with `header`) to `out` with every tensor's
/// data at a multiple of `ALIGNMENT` from the start of the file.
pub fn write_aligned(bytes: &[u8], header: &Header, out: &Path) -> std::io::Result<()> {
    let mut entries = serde_json::Map::new();
    if !header.metadata.is_empty() {
        entries.insert("__metadata__".into(), serde_json::json!(header.metadata));
    }
    // Offsets relative to the data start, which is itself aligned: round each up.
    let mut offset = 0u64;
    let mut placed = Vec::with_capacity(header.tensors.len());
    for tensor in &header.tensors {
        let begin = offset.div_ceil(ALIGNMENT) * ALIGNMENT;
        let end = begin + (tensor.end - tensor.begin);
        entries.insert(
            tensor.name.clone(),
            serde_json::json!({ "dtype": tensor.dtype, "shape": tensor.shape, "data_offsets": [begin, end] }),
        );
        placed.push((tensor, begin));
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(entries)).map_err(std::io::Error::other)?;
    // Pad the header with spaces (valid JSON whitespace) so the data section starts aligned.
    let data_start = (8 + json.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
    json.resize((data_start - 8) as usize, b' ');
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    file.write_all(&(json.len() as u64).to_le_bytes())?;
    file.write_all(&json)?;
    let mut written = 0u64;
    for (tensor, begin) in placed {
        file.write_all(&vec![0u8; (begin - written) as usize])?;
        let source = &bytes[(header.data_start + tensor.begin) as usize..(header.data_start + tensor.end) as usize];
        file.write_all(source)?;
        written = begin + source.len() as u64;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(7u8, data_len));
        bytes
    }

    #[test]
    fn accepts_a_good_header() {
        let h = parse(&file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#,
            16,
        ))
        .unwrap();
        assert_eq!(h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(h.data_bytes(), 16);
    }

    #[test]
    fn refuses_each_kind_of_bad_header_naming_the_tensor() {
        let err = |header: &str, data: usize| parse(&file(header, data)).unwrap_err().to_string();
        assert!(err(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8).contains("\"w\""));
        assert!(err(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, 16).contains("needs 12 bytes"));
        assert!(err(r#"{"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#, 16).contains("F64"));
        assert!(err(
            r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#,
            12
        )
        .contains("overlap"));
        assert!(
            err(r#"{"w":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,2]}}"#, 2).contains("2^64")
        );
        // Refusals worded by the crate's header types still name the tensor.
        let unknown = err(r#"{"w":{"dtype":"F99","shape":[2],"data_offsets":[0,2]}}"#, 2);
        assert!(unknown.contains("\"w\"") && unknown.contains("F99"), "{unknown}");
        let missing = err(r#"{"w":{"dtype":"U8","data_offsets":[0,2]}}"#, 2);
        assert!(missing.contains("\"w\"") && missing.contains("shape"), "{missing}");
        let negative = err(r#"{"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}"#, 2);
        assert!(negative.contains("\"w\""), "{negative}");
        // What MLX writes when saving without metadata.
        assert!(parse(&file(r#"{"__metadata__":null}"#, 0)).unwrap().metadata.is_empty());
        let metadata = err(r#"{"__metadata__":{"k":1}}"#, 0);
        assert!(metadata.contains("__metadata__"), "{metadata}");
        assert!(err("not json", 0).contains("JSON"));
        let mut overrun = file("{}", 0);
        overrun[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(parse(&overrun).unwrap_err().to_string().contains("overruns"));
        assert!(matches!(parse(&[1, 2, 3]), Err(HeaderError::TooShort(3))));
    }

    #[test]
    fn aligned_rewrite_keeps_every_tensor_and_aligns_it() {
        let header = r#"{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}}"#;
        let mut source = (header.len() as u64).to_le_bytes().to_vec();
        source.extend_from_slice(header.as_bytes());
        source.extend_from_slice(&[1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17]);
        let parsed = parse(&source).unwrap();
        let out = std::env::temp_dir().join(format!("mlxd-align-{}.safetensors", std::process::id()));
        write_aligned(&source, &parsed, &out).unwrap();
        let written = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        let aligned = parse(&written).unwrap();
        assert!(aligned.is_aligned());
        for (old, new) in parsed.tensors.iter().zip(&aligned.tensors) {
            assert_eq!((&old.name, &old.shape), (&new.name, &new.shape));
            let data = |h: &Header, t: &TensorInfo, bytes: &[u8]| {
                bytes[(h.data_start + t.begin) as usize..(h.data_start + t.end) as usize].to_vec()
            };
            assert_eq!(data(&parsed, old, &source), data(&aligned, new, &written));
        }
    }

    /// Thousands of mutated headers: every one is either accepted or refused with an
    /// error, never a panic (the fuzz target in fuzz/ explores further).
    #[test]
    fn mutated_headers_never_panic() {
        let base = file(
            r#"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"I64","shape":[1],"data_offsets":[16,24]}}"#,
            24,
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut refused = 0;
        for _ in 0..20_000 {
            let mut bytes = base.clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % bytes.len();
                match next() % 4 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes[at] = b"0123456789[]{},:\"-"[(next() % 18) as usize],
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if parse(&bytes).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 10_000, "most mutations must be refused ({refused})");
    }
}
