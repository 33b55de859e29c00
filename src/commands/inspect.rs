//! `glm inspect`: a GGUF's metadata and tensor table, read with glm's validating reader
//! (a malformed file is refused with the reason, never half-printed).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use glm_convert::gguf::{ArrayValue, GgufHeader, MetaValue};

use crate::cli::InspectArgs;

/// Array elements shown before "…" unless `--full`.
const ARRAY_PREVIEW: usize = 6;

pub fn run(args: &InspectArgs) -> Result<()> {
    crate::model_source::refuse_folder(&args.file, "inspect")?;
    // A split model by its first part: that part's metadata, every part's tensors.
    let header = glm_convert::gguf::read_model_header(&args.file)?;
    let path = args.file.display();
    let parts = match header
        .get(glm_convert::split::SPLIT_COUNT)
        .and_then(MetaValue::as_integer)
    {
        Some(count) if count > 1 => format!(" in {count} parts"),
        _ => String::new(),
    };
    let mut out = String::new();
    writeln!(
        out,
        "{path}: GGUF {}, {} metadata keys, {} tensors{parts}",
        header.version,
        header.meta.iter().count(),
        header.tensors.len()
    )?;
    write_summary(&mut out, &header)?;
    writeln!(out, "\nmetadata:")?;
    for (key, value) in header.meta.iter() {
        writeln!(out, "  {key:<44} {}", describe(value, args.full))?;
    }
    writeln!(out, "\ntensors:")?;
    let mut per_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    let mut total_elements = 0u64;
    for (t, _) in &header.tensors {
        let type_name = t.ggml_type.name();
        let elements: u64 = t.ne.iter().product();
        total_elements += elements;
        let entry = per_type.entry(type_name).or_default();
        entry.0 += 1;
        entry.1 += t.n_bytes();
        let shape: Vec<String> = t.ne.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "  {:<40} {:<6} {:<22} {:>12}",
            t.name,
            type_name,
            format!("[{}]", shape.join(", ")),
            glm_convert::byte_label(t.n_bytes())
        )?;
    }
    writeln!(out, "\n{} parameters", total_elements)?;
    for (name, (count, bytes)) in per_type {
        writeln!(
            out,
            "  {name:<6} {count:>5} tensors {:>12}",
            glm_convert::byte_label(bytes)
        )?;
    }
    print!("{out}");
    Ok(())
}

/// The facts people look for first: architecture, depth, NextN layers, experts.
pub(crate) fn write_summary(out: &mut String, header: &GgufHeader) -> std::fmt::Result {
    let Some(arch) = header.architecture() else {
        return Ok(());
    };
    let get = |key: &str| {
        header
            .get(&format!("{arch}.{key}"))
            .and_then(MetaValue::as_integer)
            .and_then(|v| u64::try_from(v).ok())
    };
    writeln!(out, "\nsummary:")?;
    writeln!(out, "  architecture       {arch}")?;
    let blocks = get("block_count").unwrap_or(0);
    let nextn = get("nextn_predict_layers").unwrap_or(0);
    writeln!(out, "  layers             {}", blocks.saturating_sub(nextn))?;
    let mtp = if nextn > 0 {
        format!("{nextn} (kept; used for speculative decoding)")
    } else {
        "none".to_owned()
    };
    writeln!(out, "  NextN/MTP layers   {mtp}")?;
    if let Some(experts) = get("expert_count") {
        let used = get("expert_used_count").unwrap_or(0);
        let shared = get("expert_shared_count").unwrap_or(0);
        writeln!(
            out,
            "  experts            {experts} routed, {used} used per token, {shared} shared"
        )?;
        let gating = match get("expert_gating_func") {
            Some(1) => "softmax",
            Some(2) => "sigmoid",
            Some(_) => "unknown",
            None => "not set (llama.cpp guesses)",
        };
        writeln!(out, "  gating             {gating}")?;
        writeln!(
            out,
            "  leading dense      {}",
            get("leading_dense_block_count").unwrap_or(0)
        )?;
    }
    Ok(())
}

fn describe(value: &MetaValue, full: bool) -> String {
    let MetaValue::Array(items) = value else {
        return scalar(value);
    };
    let texts = array_texts(items, if full { usize::MAX } else { ARRAY_PREVIEW });
    if !full && items.len() > ARRAY_PREVIEW {
        format!("[{} items] {}, …", items.len(), texts.join(", "))
    } else {
        format!("[{}]", texts.join(", "))
    }
}

/// The first `limit` elements of an array, as text.
fn array_texts(items: &ArrayValue, limit: usize) -> Vec<String> {
    fn show<T: ToString>(v: &[T], limit: usize) -> Vec<String> {
        v.iter().take(limit).map(T::to_string).collect()
    }
    match items {
        ArrayValue::U8(v) => show(v, limit),
        ArrayValue::I8(v) => show(v, limit),
        ArrayValue::U16(v) => show(v, limit),
        ArrayValue::I16(v) => show(v, limit),
        ArrayValue::U32(v) => show(v, limit),
        ArrayValue::I32(v) => show(v, limit),
        ArrayValue::F32(v) => show(v, limit),
        ArrayValue::Bool(v) => show(v, limit),
        ArrayValue::U64(v) => show(v, limit),
        ArrayValue::I64(v) => show(v, limit),
        ArrayValue::F64(v) => show(v, limit),
        ArrayValue::Str(v) => v.iter().take(limit).map(|s| quoted(s)).collect(),
    }
}

fn scalar(value: &MetaValue) -> String {
    match value {
        MetaValue::Str(s) => quoted(s),
        MetaValue::U8(v) => v.to_string(),
        MetaValue::I8(v) => v.to_string(),
        MetaValue::U16(v) => v.to_string(),
        MetaValue::I16(v) => v.to_string(),
        MetaValue::U32(v) => v.to_string(),
        MetaValue::I32(v) => v.to_string(),
        MetaValue::U64(v) => v.to_string(),
        MetaValue::I64(v) => v.to_string(),
        MetaValue::F32(v) => v.to_string(),
        MetaValue::F64(v) => v.to_string(),
        MetaValue::Bool(v) => v.to_string(),
        MetaValue::Array(items) => format!("[{} items]", items.len()),
    }
}

fn quoted(s: &str) -> String {
    if s.len() > 80 {
        format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(80)], s.len())
    } else {
        format!("{s:?}")
    }
}
