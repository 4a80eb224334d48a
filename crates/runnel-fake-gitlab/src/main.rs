//! `runnel-fake-gitlab`: the fake coordinator as a standalone process.
fn main() {}
