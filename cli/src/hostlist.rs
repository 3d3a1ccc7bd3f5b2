//! Slurm hostlist expressions, as in `SLURM_JOB_NODELIST`: `gpu-[01-04,07],login1`,
//! `rack[1-2]-n[1-3]`. Expanded here, without a shell and without the Slurm commands, to the
//! node names in Slurm's order.

/// The most names one expression may expand to: as many as a job's `allowed_nodes` may hold.
pub const MAX_NAMES: usize = 10_000;

/// The node names `list` stands for, in order, each once. An error names what is wrong:
/// unbalanced brackets, a range that is not numbers, a name with characters a node id cannot
/// have, or more than [`MAX_NAMES`] names.
pub fn expand(list: &str) -> Result<Vec<String>, String> {
    let fail = |why: String| format!("hostlist {list:?}: {why}");
    let mut out: Vec<String> = Vec::new();
    for item in split_top(list).map_err(fail)? {
        if item.is_empty() {
            return Err(fail("an empty name".into()));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            let Some(open) = rest.find('[') else {
                names.iter_mut().for_each(|n| n.push_str(rest));
                break;
            };
            let (prefix, after) = rest.split_at(open);
            let Some(close) = after.find(']') else {
                return Err(fail("a '[' without its ']'".into()));
            };
            let values = numbers(&after[1..close], MAX_NAMES).map_err(fail)?;
            if out.len() + names.len() * values.len() > MAX_NAMES {
                return Err(fail(format!("more than {MAX_NAMES} names")));
            }
            names = (names.iter())
                .flat_map(|n| values.iter().map(move |v| format!("{n}{prefix}{v}")))
                .collect();
            rest = &after[close + 1..];
        }
        for name in names {
            let plain = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !plain || name.len() > 128 {
                return Err(fail(format!(
                    "{name:?} is not a node name (1 to 128 characters of [A-Za-z0-9._-])"
                )));
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    if out.len() > MAX_NAMES {
        return Err(fail(format!("more than {MAX_NAMES} names")));
    }
    Ok(out)
}

/// `list` cut at the commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err("nested '['".into()),
            ']' if depth == 1 => depth = 0,
            ']' => return Err("a ']' without its '['".into()),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '[' without its ']'".into());
    }
    items.push(&list[start..]);
    Ok(items)
}

/// The numbers of a bracket's inside, `1-3,07`, each as wide as the range's first bound
/// (`01-10` → `01` … `10`); at most `max` of them.
fn numbers(inside: &str, max: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in inside.split(',') {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let bound = |s: &str| {
            (!s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| format!("{part:?} in brackets is not a number or a range"))
        };
        let (from, to) = (bound(low)?, bound(high)?);
        if from > to {
            return Err(format!("the range {part:?} runs backwards"));
        }
        if (to - from) as usize >= max.saturating_sub(out.len()) {
            return Err(format!("more than {max} names"));
        }
        let width = low.len();
        out.extend((from..=to).map(|v| format!("{v:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_what_slurm_writes() {
        let cases: [(&str, &[&str]); 7] = [
            ("work-1", &["work-1"]),
            ("work-1,spare-[1-2]", &["work-1", "spare-1", "spare-2"]),
            ("gpu[01-03,10]", &["gpu01", "gpu02", "gpu03", "gpu10"]),
            ("n[8-10]", &["n8", "n9", "n10"]),
            (
                "rack[1-2]-n[1-2]",
                &["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"],
            ),
            ("a[1],b[2-3]x,c", &["a1", "b2x", "b3x", "c"]),
            ("n1,n1,n[1-2]", &["n1", "n2"]),
        ];
        for (list, names) in cases {
            assert_eq!(expand(list).unwrap(), names, "{list}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_hostlist() {
        let cases = [
            ("", "an empty name"),
            ("a,,b", "an empty name"),
            ("n[1-3", "a '[' without its ']'"),
            ("n1-3]", "a ']' without its '['"),
            ("n[[1]]", "nested '['"),
            ("n[a-c]", "is not a number or a range"),
            ("n[1-]", "is not a number or a range"),
            ("n[3-1]", "runs backwards"),
            ("n[0-99999999999]", "more than 10000 names"),
            ("n[1-100]-[1-101]", "more than 10000 names"),
            ("n;rm -rf /", "is not a node name"),
            ("$(reboot)", "is not a node name"),
            ("n *", "is not a node name"),
        ];
        for (list, why) in cases {
            let err = expand(list).unwrap_err();
            assert!(err.contains(why), "{list:?}: {err}");
            assert!(err.contains(&format!("{list:?}")), "{err}");
        }
    }
}
