//! The conformance suite run the way a new user runs it against their own openraft
//! application: `SuiteBuilder` over their `Application`. This file is the example in
//! `conformance-tests/README.md` (`readme_shows_this_harness` checks they stay the same).
//! Cargo.toml: `[[test]] name = "conformance"`, `harness = false`.

use std::collections::BTreeMap;

use raft_envelope_openraft::testing::suite::SuiteBuilder;
use raft_envelope_openraft::testing::Application;

/// The application: a ledger of balances, `account:+amount` or `account:-amount`.
#[derive(Default)]
struct Ledger {
    balances: BTreeMap<String, i64>,
}

impl Application for Ledger {
    fn apply(&mut self, _index: u64, payload: &[u8]) -> Vec<u8> {
        // The suite proposes arbitrary bytes: anything that is not a transfer is ignored.
        let text = String::from_utf8_lossy(payload);
        let Some((account, amount)) = text.split_once(':') else { return Vec::new() };
        let Ok(amount) = amount.parse::<i64>() else { return Vec::new() };
        let balance = self.balances.entry(account.to_owned()).or_default();
        *balance = balance.saturating_add(amount);
        balance.to_be_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (account, balance) in &self.balances {
            out.extend_from_slice(format!("{account}:{balance}\n").as_bytes());
        }
        out
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.balances.clear();
        for line in String::from_utf8_lossy(bytes).lines() {
            let (account, balance) = line.split_once(':').ok_or("not a ledger snapshot")?;
            self.balances.insert(account.to_owned(), balance.parse().map_err(|_| "not a ledger snapshot")?);
        }
        Ok(())
    }
}

raft_envelope_conformance::conformance_main!(SuiteBuilder::new(Ledger::default));
