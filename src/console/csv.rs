//! CSV as RFC 4180 writes it: a cell holding a comma, a quote or a line break is quoted, its
//! quotes doubled. Values are written exactly as stored (an export is evidence); a spreadsheet
//! opening one should be told to treat every column as text.

/// One line of cells, ending in CRLF.
pub fn line<'a>(cells: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_with_separators_quotes_or_breaks_are_quoted() {
        assert_eq!(line(["a", "b c", ""]), "a,b c,\r\n");
        assert_eq!(
            line(["x,y", "say \"hi\"", "two\nlines"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
    }
}
