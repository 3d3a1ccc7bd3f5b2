//! The fuzz tier, agent side: the kernel-log parser, placeholder substitution and the config
//! loader under arbitrary input, with bounded cases so it runs in the ordinary test command.

use holdfast_agent::health::kmsg::{parse_all, parse_line};
use holdfast_agent::worker::placeholders::substitute;
use holdfast_agent::AgentConfig;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any kernel-log line, XID-shaped or not, is parsed or passed over; never a panic.
    #[test]
    fn kmsg_lines_never_panic(
        line in "\\PC{0,200}",
        pci in "[0-9a-fA-F:.]{0,16}",
        code in "[0-9]{0,12}|-[0-9]{1,4}",
        rest in "\\PC{0,60}",
    ) {
        let _ = parse_line(&line);
        let shaped = format!("4,1234,{code},-;NVRM: Xid (PCI:{pci}): {code}, {rest}");
        if let Some(xid) = parse_line(&shaped) {
            prop_assert!(xid.code.to_string() == code.trim_start_matches('0') || code.chars().all(|c| c == '0'));
        }
        let _ = parse_all(format!("{line}\n{shaped}\n").as_bytes());
    }

    /// A substituted value is never expanded again, whatever braces it holds; unknown
    /// placeholders and lone braces stay as they are.
    #[test]
    fn substitution_never_reexpands_a_value(
        a in "\\PC{0,20}",
        b in "\\PC{0,20}",
        literal in "[^{}]{0,10}",
    ) {
        let vars = vec![("node_id", a.clone()), ("job_id", b.clone())];
        let arg = format!("{literal}{{node_id}}-{{job_id}}{{unknown}}{{");
        prop_assert_eq!(substitute(&arg, &vars), format!("{literal}{a}-{b}{{unknown}}{{"));
    }

    /// Any config text loads or is refused with a message, never a panic.
    #[test]
    fn configs_load_or_are_refused(text in "([a-z_]{1,24} = (\\PC{0,12}|[0-9]{1,20}|-[0-9]{1,20}|\"\\PC{0,12}\"|\\[\\]|true)\n){0,6}") {
        if let Err(e) = AgentConfig::from_toml(&text, "fuzz.toml") {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
