//! Bar charts drawn as SVG on the server: no script, no style attribute (the page's
//! Content-Security-Policy allows neither), every label escaped like any other text.

use maud::{Markup, html};

/// One bar: its label and a non-negative value (a negative one is drawn as zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub label: String,
    pub value: i64,
}

const LABEL_WIDTH: i64 = 360;
const BAR_AREA: i64 = 420;
const ROW_HEIGHT: i64 = 24;

/// Horizontal bars, one row each, longest first as given; the value is written at the end.
pub fn horizontal_bars(title: &str, bars: &[Bar]) -> Markup {
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0).max(1);
    let width = LABEL_WIDTH + BAR_AREA + 80;
    let height = ROW_HEIGHT * i64::try_from(bars.len()).unwrap_or(i64::MAX / ROW_HEIGHT) + 8;
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title)
                viewBox={ "0 0 " (width) " " (height) } width=(width) height=(height) {
                title { (title) }
                @for (i, bar) in bars.iter().enumerate() {
                    @let y = ROW_HEIGHT * i as i64 + 4;
                    @let length = scaled(bar.value, max, BAR_AREA);
                    text x=(LABEL_WIDTH - 8) y=(y + 16) text-anchor="end" { (bar.label) }
                    rect.bar x=(LABEL_WIDTH) y=(y) width=(length) height=(ROW_HEIGHT - 6) {}
                    text x=(LABEL_WIDTH + length + 6) y=(y + 16) { (bar.value) }
                }
            }
            figcaption { (title) }
        }
    }
}

/// Vertical bars, one per label in the order given (days, left to right), with the value
/// above each and the label below.
pub fn columns(title: &str, bars: &[Bar], unit: &str) -> Markup {
    const COLUMN: i64 = 56;
    const AREA: i64 = 200;
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0).max(1);
    let width = COLUMN * i64::try_from(bars.len()).unwrap_or(1).max(1) + 16;
    let height = AREA + 60;
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title)
                viewBox={ "0 0 " (width) " " (height) } width=(width) height=(height) {
                title { (title) }
                @for (i, bar) in bars.iter().enumerate() {
                    @let x = COLUMN * i as i64 + 12;
                    @let length = scaled(bar.value, max, AREA);
                    rect.bar x=(x) y=(AREA + 20 - length) width=(COLUMN - 12) height=(length) {}
                    text x=(x + (COLUMN - 12) / 2) y=(AREA + 14 - length) text-anchor="middle"
                        font-size="10" { (bar.value) }
                    text x=(x + (COLUMN - 12) / 2) y=(AREA + 36) text-anchor="middle"
                        font-size="10" { (bar.label) }
                }
            }
            figcaption { (title) " (" (unit) ")" }
        }
    }
}

/// `value` of `max` as a length of at most `area`, at least 1 for any positive value.
fn scaled(value: i64, max: i64, area: i64) -> i64 {
    if value <= 0 {
        return 0;
    }
    let length = i128::from(value) * i128::from(area) / i128::from(max);
    i64::try_from(length).unwrap_or(area).clamp(1, area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_labels_are_escaped() {
        assert_eq!(scaled(50, 100, 420), 210);
        assert_eq!(scaled(1, 1_000_000, 420), 1);
        assert_eq!(scaled(-5, 100, 420), 0);
        assert_eq!(scaled(i64::MAX, i64::MAX, 420), 420);
        let svg = horizontal_bars(
            "t",
            &[Bar {
                label: "<script>alert(1)</script>".into(),
                value: 3,
            }],
        )
        .into_string();
        assert!(
            svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{svg}"
        );
        assert!(!svg.contains("<script>"), "{svg}");
    }
}
