//! The configuration reference, made from the config types themselves: their doc comments
//! (through `schemars`) and their defaults. `fluxgate config` prints it as TOML, every
//! setting with a one-line doc and the unset optional ones commented out;
//! `fluxgate config --markdown` prints `docs/configuration.md`, which a test keeps equal
//! to what the code says.

use serde_json::Value as Json;
use toml_edit::{DocumentMut, Item, Table};

use crate::config::Config;

/// One setting or section, in the order the config types declare them.
#[derive(Debug)]
struct Entry {
    /// Dotted path, e.g. `front.tls_addr`.
    path: String,
    /// The key.
    key: String,
    /// Doc comment.
    doc: String,
    /// Type, as a user writes it.
    ty: String,
    /// The default as TOML, `None` when unset by default.
    default: Option<String>,
    /// Sub-settings of a section (a struct); `None` for a plain setting.
    section: Option<Vec<Entry>>,
    /// A table of named entries (`application_rate_limits`, `librdkafka`).
    map: bool,
}

/// The whole reference.
fn entries() -> anyhow::Result<Vec<Entry>> {
    let schema = schemars::schema_for!(Config);
    let schema = schema.as_value().clone();
    let doc: DocumentMut = toml::to_string_pretty(&Config::default())?.parse()?;
    Ok(walk(&schema, &schema, Some(doc.as_table()), ""))
}

/// The JSON Schema (draft-07, the dialect of Helm's `values.schema.json`) of the
/// configuration file, made from the same types as the reference.
pub(crate) fn json_schema() -> anyhow::Result<String> {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Config>();
    Ok(serde_json::to_string_pretty(&schema)?)
}

/// Follows `$ref`, and `anyOf: [x, null]` (an `Option`), to the schema of the value.
fn resolve<'a>(root: &'a Json, s: &'a Json) -> &'a Json {
    if let Some(r) = s.get("$ref").and_then(Json::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        if let Some(d) = root.get("$defs").and_then(|d| d.get(name)) {
            return resolve(root, d);
        }
    }
    if let Some(alts) = s.get("anyOf").and_then(Json::as_array) {
        let mut real = alts
            .iter()
            .filter(|a| a.get("type").and_then(Json::as_str) != Some("null"));
        if let (Some(one), None) = (real.next(), real.next()) {
            return resolve(root, one);
        }
    }
    s
}

/// The first paragraph of a doc comment, on one line.
fn one_line(s: &Json) -> String {
    let d = s.get("description").and_then(Json::as_str).unwrap_or("");
    let para = d.split("\n\n").next().unwrap_or("");
    para.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn type_name(s: &Json) -> String {
    if let Some(e) = s.get("enum").and_then(Json::as_array) {
        let names: Vec<String> = e.iter().map(Json::to_string).collect();
        return format!("one of {}", names.join(", "));
    }
    // Unit variants with docs: one `const` (or one-value `enum`) schema each.
    if let Some(alts) = s.get("oneOf").and_then(Json::as_array) {
        let names: Vec<String> = alts
            .iter()
            .filter_map(|a| a.get("const").or_else(|| a.get("enum")?.get(0)))
            .map(Json::to_string)
            .collect();
        if names.len() == alts.len() {
            return format!("one of {}", names.join(", "));
        }
    }
    let base = match s.get("type") {
        Some(Json::String(t)) => t.clone(),
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".into(),
    };
    match base.as_str() {
        "array" => {
            let item = s
                .get("items")
                .map(type_name)
                .unwrap_or_else(|| "value".into());
            format!("list of {item}")
        }
        "object" => "table".into(),
        _ => base,
    }
}

fn is_struct(s: &Json) -> bool {
    s.get("properties").is_some()
}

fn walk(root: &Json, schema: &Json, present: Option<&Table>, prefix: &str) -> Vec<Entry> {
    let s = resolve(root, schema);
    let props = s.get("properties").and_then(Json::as_object);
    let Some(props) = props else {
        return Vec::new();
    };
    // Declaration order for what the defaults have (TOML keeps it), then the unset ones.
    let mut keys: Vec<String> = present
        .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
        .unwrap_or_default();
    let mut unset: Vec<String> = props
        .keys()
        .filter(|k| !keys.contains(k))
        .cloned()
        .collect();
    unset.sort();
    keys.extend(unset);
    let mut out = Vec::new();
    for key in keys {
        let Some(prop) = props.get(&key) else {
            continue;
        };
        let target = resolve(root, prop);
        let mut doc = one_line(prop);
        if doc.is_empty() {
            doc = one_line(target);
        }
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let item = present.and_then(|t| t.get(&key));
        let section = is_struct(target).then(|| {
            let sub = item.and_then(Item::as_table);
            walk(root, target, sub, &path)
        });
        let map = !is_struct(target) && target.get("additionalProperties").is_some();
        let default = match item {
            Some(Item::Value(v)) => {
                let mut v = v.clone();
                v.decor_mut().clear();
                Some(v.to_string())
            }
            Some(Item::Table(_)) if map => Some("{}".into()),
            _ => None,
        };
        out.push(Entry {
            path,
            key,
            doc,
            ty: type_name(target),
            default,
            section,
            map,
        });
    }
    out
}

/// An example value of an unset setting, as TOML.
fn placeholder(e: &Entry) -> String {
    match e.ty.as_str() {
        "string" => "\"...\"".into(),
        "integer" | "number" => "0".into(),
        "boolean" => "false".into(),
        t if t.starts_with("list") => "[]".into(),
        _ => "...".into(),
    }
}

fn toml_section(out: &mut String, entries: &[Entry], commented: bool) {
    let c = if commented { "# " } else { "" };
    // Plain settings first: TOML puts a section's keys before its sub-sections.
    for e in entries.iter().filter(|e| e.section.is_none() && !e.map) {
        out.push_str(&format!("# {}\n", e.doc));
        match &e.default {
            Some(v) => out.push_str(&format!("{c}{} = {v}\n", e.key)),
            None => out.push_str(&format!(
                "# {} = {}  (unset by default; type: {})\n",
                e.key,
                placeholder(e),
                e.ty
            )),
        }
    }
    for e in entries.iter().filter(|e| e.section.is_some() || e.map) {
        out.push_str(&format!("\n# {}\n", e.doc));
        let unset = e.default.is_none()
            && e.section
                .as_ref()
                .is_some_and(|s| s.iter().all(|x| x.default.is_none()));
        let hide = commented || unset;
        let h = if hide { "# " } else { "" };
        out.push_str(&format!("{h}[{}]\n", e.path));
        if e.map {
            out.push_str(&format!("# ({}: one entry per name)\n", e.ty));
        }
        if let Some(sub) = &e.section {
            toml_section(out, sub, hide);
        }
    }
}

/// The defaults as TOML, each setting with its doc, the unset ones commented out.
pub(crate) fn annotated_toml() -> anyhow::Result<String> {
    let mut out = String::from(
        "# fluxgate configuration: every setting with its default (`fluxgate config`).\n\
         # Settings shown commented out are unset by default. `FLUXGATE_<SECTION>__<KEY>`\n\
         # variables override the file (FLUXGATE_FRONT__TCP_ADDR sets front.tcp_addr).\n\n",
    );
    toml_section(&mut out, &entries()?, false);
    Ok(out)
}

fn md_rows(out: &mut String, entries: &[Entry]) {
    for e in entries {
        if e.section.is_some() {
            continue;
        }
        let default = e
            .default
            .as_deref()
            .map_or_else(|| "unset".to_owned(), |d| format!("`{d}`"));
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            e.path,
            e.ty.replace('|', "\\|"),
            default.replace('|', "\\|"),
            e.doc.replace('|', "\\|")
        ));
    }
    for e in entries {
        if let Some(sub) = &e.section {
            out.push_str(&format!("\n## `[{}]`\n\n{}\n\n", e.path, e.doc));
            out.push_str("| setting | type | default | what it does |\n|---|---|---|---|\n");
            md_rows(out, sub);
        }
    }
}

/// `docs/configuration.md`.
pub(crate) fn markdown() -> anyhow::Result<String> {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code by `fluxgate config --markdown` (a test checks that this file\n\
         is what the code says). Settings come from the defaults, then the TOML file given\n\
         with `-c`, then `FLUXGATE_<SECTION>__<KEY>` environment variables\n\
         (`FLUXGATE_FRONT__TCP_ADDR` sets `front.tcp_addr`). `fluxgate config` prints the\n\
         defaults as a commented TOML file.\n\n\
         | setting | type | default | what it does |\n|---|---|---|---|\n",
    );
    md_rows(&mut out, &entries()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_in_docs_is_what_the_code_says() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        let now = markdown().unwrap();
        assert!(
            file == now,
            "docs/configuration.md is out of date: run `cargo run -p fluxgate -- config --markdown > docs/configuration.md`"
        );
    }

    #[test]
    fn the_metrics_in_docs_are_the_catalogue() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            file == fluxgate_observability::catalogue::markdown(),
            "docs/metrics.md is out of date: run `cargo run -p fluxgate -- metrics > docs/metrics.md`"
        );
    }

    #[test]
    fn every_setting_is_documented_and_the_optional_listeners_are_shown() {
        let toml = annotated_toml().unwrap();
        for key in [
            "tls_addr",
            "ws_addr",
            "wss_addr",
            "[front.tls]",
            "cert_path",
        ] {
            assert!(toml.contains(&format!("# {key}")), "{key} missing:\n{toml}");
        }
        fn check(entries: &[Entry]) {
            for e in entries {
                assert!(!e.doc.is_empty(), "{} has no doc comment", e.path);
                if let Some(s) = &e.section {
                    check(s);
                }
            }
        }
        check(&entries().unwrap());
    }
}
