//! TOML settings files: where in the text a key is set, so that every refusal names the file,
//! the line and the key.

/// The 1-based line of byte `offset` in `text`, and the key that line sets (if it sets one).
pub fn locate(text: &str, offset: usize) -> (Option<usize>, String) {
    let offset = offset.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    (Some(line), key)
}

/// The 1-based line that sets `key` at the top level of `text`.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map(|i| i + 1)
}
