//! The conformance README shows the openraft harness a new user writes; it is this crate's
//! `tests/conformance.rs`, which CI runs. They must not drift apart.

#[test]
fn readme_shows_this_harness() {
    let readme = include_str!("../../conformance-tests/README.md");
    let marker = "<!-- openraft harness: adapter-openraft/tests/conformance.rs -->\n```rust,ignore\n";
    let start = readme.find(marker).expect("the README marks the harness") + marker.len();
    let end = start + readme[start..].find("```\n").expect("the block ends");
    assert_eq!(&readme[start..end], include_str!("conformance.rs"), "update the README's harness block");
}
