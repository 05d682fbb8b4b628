//! The page skeleton every report shares: one self-contained HTML document (inline CSS, inline
//! SVG, at most a few lines of inline script), readable from disk without a network and when
//! printed.

/// Escape text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One titled part of a page, reachable as `#id`.
#[derive(Debug, Clone)]
pub struct Section {
    pub id: String,
    pub title: String,
    /// Ready HTML.
    pub body: String,
}

/// A report page: a title, a subtitle line, sections in order, and optional inline script.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub title: String,
    pub subtitle: String,
    pub sections: Vec<Section>,
    pub script: String,
}

const CSS: &str = r#"
:root { --fg:#1b1f24; --muted:#5b6470; --line:#d5dae0; --accent:#1f77b4; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  margin: 0 auto; max-width: 1280px; padding: 0 20px 40px; background: #fff; }
header { border-bottom: 2px solid var(--line); padding: 14px 0 8px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.sub { color: var(--muted); margin: 0; }
nav { margin: 8px 0 0; font-size: 13px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f7; font-weight: 600; }
.table-wrap { overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0 0 10px; break-inside: avoid; page-break-inside: avoid; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12px; max-width: 640px; }
.note { color: var(--muted); font-size: 13px; }
.feature { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 12px 0;
  break-inside: avoid; page-break-inside: avoid; }
.feature h3 { margin-top: 4px; }
.feature .cols { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.ctx { font: 12.5px/1.9 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap;
  word-break: break-all; border-bottom: 1px dotted var(--line); padding: 2px 0; }
.ctx .act { display: inline-block; min-width: 4.5em; color: var(--muted); }
.tok { border-radius: 2px; }
.tok.max { outline: 2px solid #b30000; font-weight: 700; }
.logits { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
.logits td { padding: 1px 6px; }
.pos { color: #0b6e2e; } .neg { color: #a11; }
.search { margin: 8px 0; } .search input { font: inherit; padding: 3px 6px; width: 9em; }
#search-msg { color: #a11; margin-left: 8px; }
.flash { box-shadow: 0 0 0 3px #ffbf00; }
@media print { nav, .search { display: none; } body { max-width: none; } a { color: inherit; } .table-wrap { overflow: visible; } table { font-size: 9px; } }
"#;

impl Page {
    /// The whole document.
    pub fn render(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        h.push_str(&format!("<title>{}</title>\n", escape(&self.title)));
        h.push_str("<style>");
        h.push_str(CSS);
        h.push_str("</style>\n</head>\n<body>\n<header>\n");
        h.push_str(&format!("<h1>{}</h1>\n", escape(&self.title)));
        if !self.subtitle.is_empty() {
            h.push_str(&format!(
                "<p class=\"sub\">{}</p>\n",
                escape(&self.subtitle)
            ));
        }
        h.push_str("<nav>");
        for s in &self.sections {
            h.push_str(&format!(
                "<a href=\"#{}\">{}</a>",
                escape(&s.id),
                escape(&s.title)
            ));
        }
        h.push_str("</nav>\n</header>\n<main>\n");
        for s in &self.sections {
            h.push_str(&format!(
                "<section id=\"{}\">\n<h2>{}</h2>\n{}\n</section>\n",
                escape(&s.id),
                escape(&s.title),
                s.body
            ));
        }
        h.push_str("</main>\n");
        if !self.script.is_empty() {
            h.push_str("<script>\n");
            h.push_str(&self.script);
            h.push_str("\n</script>\n");
        }
        h.push_str("</body>\n</html>\n");
        h
    }
}

/// A table; the first row is the header. Cells are escaped.
pub fn table(rows: &[Vec<String>]) -> String {
    let mut h = String::from("<div class=\"table-wrap\"><table>\n");
    for (i, r) in rows.iter().enumerate() {
        let tag = if i == 0 { "th" } else { "td" };
        h.push_str("<tr>");
        for c in r {
            h.push_str(&format!("<{tag}>{}</{tag}>", escape(c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
    h
}

/// An SVG plot with a caption; `name` is the plot's id for tests and links (`data-plot`).
pub fn figure(name: &str, svg: &str, caption: &str) -> String {
    format!(
        "<figure class=\"plot\" data-plot=\"{}\">{}<figcaption>{}</figcaption></figure>\n",
        escape(name),
        strip_xml_decl(svg),
        escape(caption)
    )
}

/// Plotters' SVG starts with the element itself; drop an XML declaration if one is there.
fn strip_xml_decl(svg: &str) -> &str {
    match svg.strip_prefix("<?xml") {
        Some(rest) => rest.find("?>").map_or(svg, |i| rest[i + 2..].trim_start()),
        None => svg,
    }
}

/// A paragraph of muted explanatory text (escaped).
pub fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_renders() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let p = Page {
            title: "T <1>".into(),
            subtitle: String::new(),
            sections: vec![Section {
                id: "s".into(),
                title: "S".into(),
                body: table(&[vec!["a".into()], vec!["<b>".into()]]),
            }],
            script: String::new(),
        };
        let h = p.render();
        assert!(h.contains("<title>T &lt;1&gt;</title>"));
        assert!(h.contains("<section id=\"s\">") && h.contains("<td>&lt;b&gt;</td>"));
        assert!(!h.contains("<script"));
    }
}
