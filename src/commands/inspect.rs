use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{anyhow, Result};
use serde_json::Value;

use crate::cli::InspectArgs;

/// Array elements shown before "…" unless `--full`.
const ARRAY_PREVIEW: usize = 6;

pub fn run(args: &InspectArgs) -> Result<()> {
    crate::model_source::check_gguf_magic(&args.file)?;
    let path = args.file.to_string_lossy();
    let model = gguf_rs::get_gguf_container_array_size(&path, u64::MAX)
        .and_then(|mut c| c.decode())
        .map_err(|e| anyhow!("{path}: unreadable GGUF: {e}"))?;
    let mut out = String::new();
    writeln!(
        out,
        "{path}: GGUF {}, {} metadata keys, {} tensors",
        model.get_version(),
        model.num_kv(),
        model.num_tensor()
    )?;
    write_summary(&mut out, model.metadata())?;
    writeln!(out, "\nmetadata:")?;
    for (key, value) in model.metadata() {
        writeln!(out, "  {key:<44} {}", describe(value, args.full))?;
    }
    writeln!(out, "\ntensors:")?;
    let mut per_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut total_elements = 0u64;
    for t in model.tensors() {
        let type_name = type_name(t.kind);
        let elements: u64 = t.shape.iter().product();
        total_elements += elements;
        let entry = per_type.entry(type_name.clone()).or_default();
        entry.0 += 1;
        entry.1 += t.size;
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "  {:<40} {:<6} {:<22} {:>12}",
            t.name,
            type_name,
            format!("[{}]", shape.join(", ")),
            human_bytes(t.size)
        )?;
    }
    writeln!(out, "\n{} parameters", total_elements)?;
    for (name, (count, bytes)) in per_type {
        writeln!(out, "  {name:<6} {count:>5} tensors {:>12}", human_bytes(bytes))?;
    }
    print!("{out}");
    Ok(())
}

/// The facts people look for first: architecture, depth, NextN layers, experts.
fn write_summary(out: &mut String, meta: &BTreeMap<String, Value>) -> std::fmt::Result {
    let Some(arch) = meta.get("general.architecture").and_then(Value::as_str) else {
        return Ok(());
    };
    let get = |key: &str| meta.get(&format!("{arch}.{key}")).and_then(Value::as_u64);
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

fn type_name(kind: u32) -> String {
    gguf_rs::GGMLType::try_from(kind).map_or_else(|_| format!("type{kind}"), |t| t.to_string())
}

fn describe(value: &Value, full: bool) -> String {
    match value {
        Value::Array(items) if !full && items.len() > ARRAY_PREVIEW => {
            let head: Vec<String> = items[..ARRAY_PREVIEW].iter().map(short).collect();
            format!("[{} items] {}, …", items.len(), head.join(", "))
        }
        Value::Array(items) => {
            let all: Vec<String> = items.iter().map(short).collect();
            format!("[{}]", all.join(", "))
        }
        other => short(other),
    }
}

fn short(value: &Value) -> String {
    match value {
        Value::String(s) if s.len() > 80 => {
            format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(80)], s.len())
        }
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}
