//! A checker of the Prometheus text exposition format (version 0.0.4), for tests that scrape the
//! daemon: it parses every line and holds the rules a scraper relies on, so the tests still check
//! the format where `promtool` is not installed. Where it is (`PROMTOOL`, or on `PATH`),
//! [`promtool_check`] runs `promtool check metrics` as well.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One sample: metric name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed, checked exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → declared type.
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the one sample of `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The sum over every sample of `name` whose labels include these (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn valid_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` (the braces included) → labels, and what follows the closing brace.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s
        .strip_prefix('{')
        .ok_or_else(|| "labels must open with {".to_string())?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label without '='")?;
        let name = rest[..eq].trim();
        if !valid_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in a label value")),
                },
                Some((_, '\n')) => return Err("a raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = rest[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by ','".into());
        }
    }
}

/// The family a sample belongs to, given the declared types.
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base;
            }
        }
    }
    name
}

/// Parse `text` and check it: the grammar of every line; one non-empty HELP and one TYPE per family,
/// before its samples; each family's samples together; no series twice; counters named `_total` and never
/// negative; histograms with cumulative buckets, a `+Inf` bucket equal to `_count`, and a `_sum`.
pub fn check(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut helped = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), help)
                    if !valid_name(name, true)
                        || help.unwrap_or_default().trim().is_empty()
                        || !helped.insert(name.to_string()) =>
                {
                    return Err(at("a bad, empty or repeated HELP".into()));
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !valid_name(name, true) || !known.contains(&kind) {
                        return Err(at("a bad TYPE".into()));
                    }
                    if e.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("TYPE given twice".into()));
                    }
                    if finished.contains(name)
                        || e.samples.iter().any(|s| family(&s.name, &e.types) == name)
                    {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(at("a counter's name must end in _total".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text".into()));
        }
        let fam = family(name, &e.types).to_string();
        if !e.types.contains_key(&fam) || !helped.contains(&fam) {
            return Err(at(format!("a sample of {fam} before its HELP and TYPE")));
        }
        if current.as_deref() != Some(&fam) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            if finished.contains(&fam) {
                return Err(at(format!("samples of {fam} are not together")));
            }
            current = Some(fam.clone());
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(at("a series given twice".into()));
        }
        match e.types.get(&fam).map(String::as_str) {
            // NaN included: a counter is a number of events.
            Some("counter") if value.is_nan() || value < 0.0 => {
                return Err(at("a counter below 0".into()));
            }
            Some("histogram") if name.ends_with("_bucket") && !labels.contains_key("le") => {
                return Err(at("a bucket without le".into()));
            }
            _ => {}
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (fam, kind) in &e.types {
        if kind == "histogram" {
            check_histogram(&e, fam)?;
        }
    }
    Ok(e)
}

fn check_histogram(e: &Exposition, fam: &str) -> Result<(), String> {
    // Per label set (without `le`): the buckets in order, the sum, the count.
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut series: BTreeMap<BTreeMap<String, String>, Series> = BTreeMap::new();
    for s in &e.samples {
        let mut labels = s.labels.clone();
        if s.name == format!("{fam}_bucket") {
            let le = labels.remove("le").unwrap_or_default();
            let le = parse_value(&le)?;
            series.entry(labels).or_default().0.push((le, s.value));
        } else if s.name == format!("{fam}_sum") {
            series.entry(labels).or_default().1 = Some(s.value);
        } else if s.name == format!("{fam}_count") {
            series.entry(labels).or_default().2 = Some(s.value);
        }
    }
    for (labels, (buckets, sum, count)) in series {
        let what = format!("{fam}{labels:?}");
        let count = count.ok_or(format!("{what}: no _count"))?;
        sum.ok_or(format!("{what}: no _sum"))?;
        let ordered = buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        if !ordered {
            return Err(format!("{what}: buckets not increasing and cumulative"));
        }
        match buckets.last() {
            Some((le, n)) if le.is_infinite() && *n == count => {}
            _ => return Err(format!("{what}: the +Inf bucket must equal _count")),
        }
    }
    Ok(())
}

/// `promtool`: `$PROMTOOL` when set (then it must exist), else the first on `PATH`.
pub fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PROMTOOL={} is not a file", p.display());
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// Run `promtool check metrics` on `text`: `Ok(true)` when it passed, `Ok(false)` when there is no
/// promtool here (said on stderr), `Err` with promtool's complaints otherwise.
pub fn promtool_check(text: &str) -> Result<bool, String> {
    let Some(promtool) = promtool() else {
        eprintln!("promtool not found (set PROMTOOL or put it on PATH): `promtool check metrics` was NOT run; only the built-in format check was");
        return Ok(false);
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", promtool.display()))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        eprintln!("promtool check metrics: passed ({})", promtool.display());
        Ok(true)
    } else {
        Err(format!(
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_exposition_parses() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n\
                    # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n\
                    # HELP g G.\n# TYPE g gauge\ng{k=\"v\",l=\"x\"} 1.5\ng{k=\"z\",l=\"x\"} -2\n";
        let e = check(text).unwrap();
        assert_eq!(e.value("a_total", &[("x", "q\"\\\n")]), Some(3.0));
        assert_eq!(e.value("h_count", &[]), Some(2.0));
        assert_eq!(e.value("g", &[("k", "z"), ("l", "x")]), Some(-2.0));
    }

    #[test]
    fn broken_expositions_are_refused() {
        let h = "# HELP h H.\n# TYPE h histogram\n";
        let bad_histograms = [
            format!("{h}h_bucket{{le=\"1\"}} 3\nh_bucket{{le=\"+Inf\"}} 2\nh_sum 1\nh_count 2\n"),
            format!("{h}h_bucket{{le=\"1\"}} 1\nh_sum 1\nh_count 1\n"), // no +Inf
            format!("{h}h_bucket{{le=\"+Inf\"}} 1\nh_count 1\n"),       // no _sum
        ];
        for bad in [
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3", // no final newline
            "# TYPE a_total counter\na_total 3\n",                  // no HELP
            "# HELP a_total A.\na_total 3\n",                       // no TYPE
            "# HELP a_total \n# TYPE a_total counter\na_total 3\n", // empty HELP
            "# HELP a_total A.\n# TYPE a_total counter\na_total three\n",
            "# HELP a A.\n# TYPE a counter\na 3\n", // a counter not named _total
            "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",
            "# HELP g G.\n# TYPE g gauge\ng{k=\"v} 1\n",
            "# HELP g G.\n# TYPE g gauge\ng{k=1} 1\n",
            "# HELP g G.\n# TYPE g gauge\ng{k=\"v\",k=\"w\"} 1\n",
            "# HELP g G.\n# TYPE g gauge\ng 1\ng 2\n",
            "# HELP g G.\n# TYPE g wat\ng 1\n",
            "# HELP g G.\n# TYPE g gauge\n# HELP h H.\n# TYPE h gauge\ng{a=\"1\"} 1\nh 1\ng{a=\"2\"} 1\n",
            "# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n",
        ]
        .into_iter()
        .map(str::to_string)
        .chain(bad_histograms)
        {
            assert!(check(&bad).is_err(), "accepted {bad:?}");
        }
    }
}
