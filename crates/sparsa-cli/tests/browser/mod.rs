//! Drives a real headless Chromium over a report page: `--dump-dom` after the page's scripts ran,
//! with a probe injected into a copy of the page that records script errors and console errors,
//! and writes each plot SVG's rendered size into attributes the test reads back.
//!
//! The browser is required: CI installs Debian's `chromium-headless-shell` (`.ci/run`). Set
//! `SPARSA_CHROMIUM` to use another binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The headless browser, or a panic that says how to install it.
pub fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("SPARSA_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let p = Path::new("/usr/lib/chromium/chromium-headless-shell");
    if p.is_file() {
        return p.to_path_buf();
    }
    panic!(
        "no headless Chromium found: these tests render the HTML reports in a real browser. \
         Install it with `apt-get install -y chromium-headless-shell` (.ci/run does) or set \
         SPARSA_CHROMIUM to a Chromium binary."
    );
}

/// Runs first: records uncaught errors, rejected promises and console.error calls.
const HEAD_PROBE: &str = r#"<script>
window.__errs = [];
window.addEventListener('error', function (e) { window.__errs.push('error: ' + (e.message || e.type)); }, true);
window.addEventListener('unhandledrejection', function (e) { window.__errs.push('rejection: ' + e.reason); });
(function () { var ce = console.error; console.error = function () { window.__errs.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); }; })();
</script>"#;

/// Runs last: sizes of every SVG, the search box, and the error list, written into the DOM.
const TAIL_PROBE: &str = r#"<script>
(function () {
  var svgs = document.querySelectorAll('svg');
  for (var i = 0; i < svgs.length; i++) {
    var r = svgs[i].getBoundingClientRect();
    svgs[i].setAttribute('data-w', Math.round(r.width));
    svgs[i].setAttribute('data-h', Math.round(r.height));
  }
  var p = document.createElement('div');
  p.id = '__probe';
  var form = document.getElementById('search-form');
  if (form) {
    var first = document.querySelector('article.feature');
    var input = document.getElementById('search-id');
    var msg = document.getElementById('search-msg');
    input.value = first.getAttribute('data-feature');
    form.dispatchEvent(new Event('submit', {cancelable: true}));
    var found = msg.textContent === '' && first.classList.contains('flash');
    input.value = '999999999';
    form.dispatchEvent(new Event('submit', {cancelable: true}));
    var missing = msg.textContent.indexOf('no dashboard') >= 0;
    p.setAttribute('data-search', found && missing ? 'ok' : 'broken');
  }
  p.setAttribute('data-errors', JSON.stringify(window.__errs));
  document.body.appendChild(p);
})();
</script>"#;

/// What the browser saw.
pub struct Rendered {
    pub dom: String,
    pub stderr: String,
}

impl Rendered {
    /// The errors the probe recorded (JSON list as text) — must be `[]`.
    pub fn errors(&self) -> String {
        let at = self
            .dom
            .find("id=\"__probe\"")
            .expect("the probe did not run: the page's scripts stopped it");
        let tag_end = at + self.dom[at..].find('>').unwrap();
        let tag = &self.dom[at..tag_end];
        let k = tag
            .find("data-errors=\"")
            .expect("probe without errors attribute")
            + 13;
        let v = &tag[k..];
        v[..v.find('"').unwrap()].replace("&quot;", "\"")
    }

    /// Assert a clean load: no recorded errors, no uncaught errors in the browser log.
    pub fn assert_clean(&self) {
        assert_eq!(self.errors(), "[]", "script or console errors on the page");
        for line in self.stderr.lines() {
            let l = line.to_ascii_lowercase();
            assert!(
                !(l.contains("console") && (l.contains("uncaught") || l.contains(":error:"))),
                "console error in the browser log: {line}"
            );
        }
    }

    /// The `<figure data-plot=NAME>` element's SVG size (width, height) as rendered.
    pub fn plot_size(&self, name: &str) -> (u32, u32) {
        let key = format!("data-plot=\"{name}\"");
        let at = self
            .dom
            .find(&key)
            .unwrap_or_else(|| panic!("plot {name} missing from the page"));
        let svg = at + self.dom[at..].find("<svg").expect("figure without svg");
        let tag = &self.dom[svg..svg + self.dom[svg..].find('>').unwrap()];
        let attr = |a: &str| -> u32 {
            let k = tag
                .find(&format!(" {a}=\""))
                .unwrap_or_else(|| panic!("svg of {name} has no {a}: {tag}"))
                + a.len()
                + 3;
            tag[k..k + tag[k..].find('"').unwrap()].parse().unwrap()
        };
        (attr("data-w"), attr("data-h"))
    }

    /// Every plot on the page has a non-zero rendered size; returns their names.
    pub fn assert_plots_drawn(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = self.dom.as_str();
        while let Some(i) = rest.find("data-plot=\"") {
            let v = &rest[i + 11..];
            names.push(v[..v.find('"').unwrap()].to_string());
            rest = v;
        }
        for n in &names {
            let (w, h) = self.plot_size(n);
            assert!(w > 0 && h > 0, "plot {n} renders at {w}×{h}");
        }
        names
    }

    pub fn assert_sections(&self, ids: &[&str]) {
        for id in ids {
            assert!(
                self.dom.contains(&format!("<section id=\"{id}\">")),
                "section {id} missing"
            );
        }
    }
}

/// A copy of `page` with the probes, next to it (same directory, so relative links resolve).
fn probed_copy(page: &Path) -> PathBuf {
    let html = std::fs::read_to_string(page).unwrap();
    let html = html
        .replacen("<head>", &format!("<head>\n{HEAD_PROBE}"), 1)
        .replacen("</body>", &format!("{TAIL_PROBE}\n</body>"), 1);
    let out = page.with_extension("probe.html");
    std::fs::write(&out, html).unwrap();
    out
}

fn base_args(cmd: &mut Command, profile: &Path) {
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
}

/// Load `page` (a file) headless and return the DOM after its scripts ran.
pub fn render(page: &Path) -> Rendered {
    let probe = probed_copy(page);
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    base_args(&mut cmd, profile.path());
    cmd.arg("--window-size=1280,1000").arg("--dump-dom");
    cmd.arg(format!(
        "file://{}",
        probe.canonicalize().unwrap().display()
    ));
    let out = cmd.output().expect("cannot start the headless browser");
    let _ = std::fs::remove_file(&probe);
    let r = Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success() && r.dom.contains("</html>"),
        "the browser failed on {}: {}",
        page.display(),
        r.stderr
    );
    r
}

/// Screenshot `page` (PNG, `w`×`h`) showing its header and only the sections `show` (all when
/// empty) and extra `css`, so one picture can hold the plots of a long page.
pub fn screenshot(page: &Path, png: &Path, w: u32, h: u32, show: &[&str], css: &str) {
    let html = std::fs::read_to_string(page).unwrap();
    let hide = if show.is_empty() {
        String::new()
    } else {
        let not: String = show.iter().map(|s| format!(":not(#{s})")).collect();
        format!("<style>main > section{not} {{ display: none; }} nav {{ display: none; }} {css}</style>")
    };
    let copy = page.with_extension("shot.html");
    std::fs::write(
        &copy,
        html.replacen("</head>", &format!("{hide}</head>"), 1),
    )
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    base_args(&mut cmd, profile.path());
    cmd.arg(format!("--window-size={w},{h}"))
        .arg("--hide-scrollbars")
        .arg(format!("--screenshot={}", png.display()));
    cmd.arg(format!("file://{}", copy.canonicalize().unwrap().display()));
    let out = cmd.output().expect("cannot start the headless browser");
    let _ = std::fs::remove_file(&copy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The page links or loads nothing over the network: no `src`/`href`/CSS `url(`/`@import`
/// pointing at http(s). (SVG's `xmlns="http://www.w3.org/2000/svg"` names a namespace; it is
/// not fetched, so it is allowed.)
pub fn assert_offline(html: &str) {
    let lower = html.to_ascii_lowercase();
    for attr in ["src=", "href=", "url(", "@import", "action=", "srcset="] {
        let mut rest = lower.as_str();
        while let Some(i) = rest.find(attr) {
            let v = rest[i + attr.len()..].trim_start_matches(['"', '\'', ' ']);
            assert!(
                !(v.starts_with("http:") || v.starts_with("https:") || v.starts_with("//")),
                "network resource in the report: {}",
                &rest[i..(i + 80).min(rest.len())]
            );
            rest = &rest[i + attr.len()..];
        }
    }
    // Every remaining http(s) occurrence is the SVG namespace.
    let stripped = lower
        .replace("http://www.w3.org/2000/svg", "")
        .replace("http://www.w3.org/1999/xlink", "");
    assert!(
        !stripped.contains("http://") && !stripped.contains("https://"),
        "an http(s) address other than the SVG namespace is in the report"
    );
}

/// Print `page` to PDF headless (the reports must stay readable on paper); returns the PDF bytes.
pub fn print_pdf(page: &Path) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let pdf = profile.path().join("page.pdf");
    let mut cmd = Command::new(chromium());
    base_args(&mut cmd, profile.path());
    cmd.arg("--no-pdf-header-footer")
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()));
    let out = cmd.output().expect("cannot start the headless browser");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&pdf).unwrap()
}
