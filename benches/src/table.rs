//! Result tables as the benches print them: a header row and rows of cells, each column as
//! wide as its widest cell; text left-aligned, numbers right-aligned.
use std::fmt::Write as _;

#[derive(Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: ToString>(header: &[S]) -> Self {
        Self { header: header.iter().map(ToString::to_string).collect(), rows: Vec::new() }
    }

    /// Adds a row (cells beyond the header's count are kept; missing ones print empty).
    pub fn row<S: ToString>(&mut self, cells: &[S]) -> &mut Self {
        self.rows.push(cells.iter().map(ToString::to_string).collect());
        self
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let cell = |r: &Vec<String>, c: usize| r.get(c).map_or("", String::as_str).to_owned();
        let width: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().chain([&self.header]).map(|r| cell(r, c).chars().count()).max().unwrap_or(0))
            .collect();
        let numeric: Vec<bool> = (0..cols)
            .map(|c| self.rows.iter().map(|r| cell(r, c)).filter(|s| !s.is_empty()).all(|s| looks_numeric(&s)))
            .collect();
        let mut out = String::new();
        for r in [&self.header].into_iter().chain(&self.rows) {
            let line: Vec<String> = (0..cols)
                .map(|c| {
                    let s = cell(r, c);
                    let pad = width[c].saturating_sub(s.chars().count());
                    if numeric[c] {
                        format!("{}{s}", " ".repeat(pad))
                    } else {
                        format!("{s}{}", " ".repeat(pad))
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A cell that reads as a number, possibly with a unit or sign after it ("1.5", "-", "12 %",
/// "0.93×").
fn looks_numeric(s: &str) -> bool {
    s == "-" || s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') || s == "NaN"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_text_left_and_numbers_right() {
        let mut t = Table::new(&["variant", "p50 µs"]);
        t.row(&["weir", "10.5"]).row(&["iptables-long", "7"]);
        assert_eq!(t.render(), "variant        p50 µs\nweir             10.5\niptables-long       7\n");
    }
}
