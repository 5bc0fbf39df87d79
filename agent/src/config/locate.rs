//! Finding the line of a key in a YAML text, for errors found after parsing.
//!
//! The YAML parser knows where every value was, but a check such as `min_blocks <=
//! max_blocks` runs on the parsed struct. This walks the text by indentation instead: it
//! understands block mappings (the way endpoint configs are written) and, one level deep,
//! flow mappings on one line (`strategy: {period: 5s}`), which is all our configs use.

/// A line that can hold a key: not blank, not only a comment, not a document marker.
struct Line<'a> {
    number: usize,
    indent: usize,
    content: &'a str,
}

fn significant_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(index, raw)| {
            let content = raw.trim_start();
            let skip = content.is_empty()
                || content.starts_with('#')
                || content == "---"
                || content == "...";
            (!skip).then(|| Line {
                number: index + 1,
                indent: raw.len() - content.len(),
                content,
            })
        })
        .collect()
}

/// The 1-based line of the dotted `path` (`provider.max_blocks`) in `text`, or `None` when
/// the key is not written there.
pub(super) fn key_line(text: &str, path: &str) -> Option<usize> {
    key_lines(text, path).first().copied()
}

/// Every line where the last key of `path` is written under its parent (more than one when
/// the key is duplicated).
pub(super) fn key_lines(text: &str, path: &str) -> Vec<usize> {
    let lines = significant_lines(text);
    let segments: Vec<&str> = path.split('.').collect();
    let mut start = 0;
    let mut parent: Option<&Line<'_>> = None;
    for (depth, segment) in segments.iter().enumerate() {
        // The parent's block: the lines after it that are indented deeper than it.
        let end = match parent {
            Some(p) => lines[start..]
                .iter()
                .position(|l| l.indent <= p.indent)
                .map_or(lines.len(), |offset| start + offset),
            None => lines.len(),
        };
        let block = &lines[start..end];
        let child_indent = block.first().map(|l| l.indent);
        let found: Vec<usize> = block
            .iter()
            .enumerate()
            .filter(|(_, l)| Some(l.indent) == child_indent && key_of(l.content) == Some(segment))
            .map(|(offset, _)| start + offset)
            .collect();
        let Some(&first) = found.first() else {
            return match parent {
                Some(p) if flow_mapping_holds(p.content, &segments[depth..]) => vec![p.number],
                _ => vec![],
            };
        };
        if depth + 1 == segments.len() {
            return found.iter().map(|&i| lines[i].number).collect();
        }
        parent = Some(&lines[first]);
        start = first + 1;
    }
    vec![]
}

/// The key of a `key: value` or `key:` line, unquoted.
fn key_of(content: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(rest) = content.strip_prefix(quote) {
            let close = rest.find(quote)?;
            return rest[close + 1..]
                .trim_start()
                .starts_with(':')
                .then(|| &rest[..close]);
        }
    }
    let colon = content.match_indices(':').map(|(i, _)| i).find(|&i| {
        content[i + 1..]
            .chars()
            .next()
            .is_none_or(char::is_whitespace)
    })?;
    Some(content[..colon].trim_end())
}

/// Whether a `key: {a: 1, b: {c: 2}}` line's flow mapping names every key of `keys`.
fn flow_mapping_holds(content: &str, keys: &[&str]) -> bool {
    let Some(open) = content.find('{') else {
        return false;
    };
    let flow = &content[open..];
    keys.iter().all(|key| {
        flow.match_indices(key).any(|(i, _)| {
            let before = flow[..i].trim_end().chars().last();
            let after = flow[i + key.len()..].trim_start().chars().next();
            matches!(before, Some('{' | ',')) && after == Some(':')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment: with a colon
display_name: 'Perlmutter: CPU'
service_url: http://127.0.0.1:8470

engine:
  max_workers_per_node: 64
  # heartbeat_period: 10s
  heartbeat_period: 30s
provider:
  type: local
  worker_init: |
    module load python
    max_blocks: 9
  max_blocks: 4
  launcher: {type: single_node}
  \"min_blocks\": 1
strategy: {period: 5s, max_idletime: 120s}
";

    #[test]
    fn finds_top_level_and_nested_keys() {
        assert_eq!(key_line(TEXT, "display_name"), Some(2));
        assert_eq!(key_line(TEXT, "service_url"), Some(3));
        assert_eq!(key_line(TEXT, "engine"), Some(5));
        assert_eq!(key_line(TEXT, "engine.max_workers_per_node"), Some(6));
        assert_eq!(key_line(TEXT, "provider.type"), Some(10));
        assert_eq!(key_line(TEXT, "provider.min_blocks"), Some(16));
    }

    #[test]
    fn skips_comments_and_block_scalar_content() {
        assert_eq!(key_line(TEXT, "engine.heartbeat_period"), Some(8));
        assert_eq!(key_line(TEXT, "provider.max_blocks"), Some(14));
    }

    #[test]
    fn a_key_in_a_one_line_flow_mapping_is_on_its_parent_line() {
        assert_eq!(key_line(TEXT, "strategy.period"), Some(17));
        assert_eq!(key_line(TEXT, "strategy.max_idletime"), Some(17));
        assert_eq!(key_line(TEXT, "provider.launcher.type"), Some(15));
        assert_eq!(key_line(TEXT, "strategy.idle"), None);
    }

    #[test]
    fn absent_keys_and_keys_of_other_sections_are_not_found() {
        assert_eq!(key_line(TEXT, "provider.heartbeat_period"), None);
        assert_eq!(key_line(TEXT, "engine.max_blocks"), None);
        assert_eq!(key_line(TEXT, "nothing"), None);
        assert_eq!(key_line("", "engine"), None);
    }

    #[test]
    fn duplicates_are_all_found() {
        let text = "engine:\n  a: 1\n  b: 2\n  a: 3\nother:\n  a: 4\n";
        assert_eq!(key_lines(text, "engine.a"), vec![2, 4]);
    }

    #[test]
    fn key_of_handles_values_with_colons_and_quoted_keys() {
        assert_eq!(key_of("service_url: http://h:1"), Some("service_url"));
        assert_eq!(key_of("engine:"), Some("engine"));
        assert_eq!(key_of("'a b': 1"), Some("a b"));
        assert_eq!(key_of("\"k\" : 1"), Some("k"));
        assert_eq!(key_of("just text"), None);
        assert_eq!(key_of("http://x"), None);
    }
}
