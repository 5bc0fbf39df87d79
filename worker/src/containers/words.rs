//! Splitting a rendered command line into words the way a POSIX shell would, without
//! running one: quotes and backslashes are honoured, nothing is expanded.

/// Splits `line` into words: blanks (spaces, tabs, newlines) separate words;
/// `'...'` keeps everything literally; `"..."` keeps everything but `\"`, `\\`, `\$` and
/// `` \` ``, which lose their backslash; a backslash outside quotes keeps the next
/// character (and a backslash-newline joins lines). `a'b c'd` is one word, `ab cd`.
///
/// An unterminated quote or a trailing backslash is an error saying so.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word can be empty yet present (`''`), so "in a word" is tracked apart from text.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote (') is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a double quote (\") is not closed".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a double quote (\") is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err("the line ends with a lone backslash".into()),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::shell_quote;

    fn split(line: &str) -> Vec<String> {
        split_words(line).unwrap()
    }

    #[test]
    fn blanks_separate_words_and_quotes_join_them() {
        assert_eq!(split("  a  b\n\tc "), ["a", "b", "c"]);
        assert_eq!(split("--image='/a b'/c"), ["--image=/a b/c"]);
        assert_eq!(split(r#"-B "/x y" '' """#), ["-B", "/x y", "", ""]);
        assert_eq!(split(r#""a\"b\\c\$d\e""#), [r#"a"b\c$d\e"#]);
        assert_eq!(split(r"a\ b c\\d"), ["a b", r"c\d"]);
        assert_eq!(split("a \\\n b"), ["a", "b"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn nothing_is_expanded() {
        assert_eq!(
            split("$HOME `id` $(id) * ~ ;"),
            ["$HOME", "`id`", "$(id)", "*", "~", ";"]
        );
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert!(split_words("'abc").unwrap_err().contains("single quote"));
        assert!(split_words("\"abc").unwrap_err().contains("double quote"));
        assert!(split_words("abc\\").unwrap_err().contains("backslash"));
    }

    #[test]
    fn whatever_shell_quote_makes_splits_back_to_one_word() {
        for word in [
            "",
            "plain",
            "a b",
            "it's",
            "say \"hi\"",
            "$x `y` \\z",
            "mixed 'both' \"kinds\"",
            "tab\there\nnewline",
            "größe",
        ] {
            assert_eq!(split(&shell_quote(word)), [word], "{word:?}");
        }
    }
}
