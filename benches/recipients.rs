//! Recipient lookups at RCPT time, against a 1,000,000-address map, beside
//! a naive baseline (a `HashSet<String>` of lower-cased addresses, with the
//! allocation and lower-casing a lookup then needs):
//!
//! * `recipients/known`: a listed address, as sent (mixed case).
//! * `recipients/unknown`: an address at a map domain that is not listed.
//! * `recipients/extension`: `user+tag@d`, found by folding to `user@d`.
//!
//! One iteration is 1,000 lookups over different addresses (so the table is
//! walked, not one cache line). Each bench asserts its result.
//! Run: `cargo bench --bench recipients`.

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmx::protocol::recipients::{Lookup, MapOptions, RecipientMap};

const ENTRIES: usize = 1_000_000;
const BATCH: usize = 1_000;
const DOMAIN: &str = "example.com";

fn bench(c: &mut Criterion) {
    let mut text = String::with_capacity(ENTRIES * 28);
    for i in 0..ENTRIES {
        text.push_str(&format!("user{i}@{DOMAIN}\n"));
    }
    let map = RecipientMap::parse(text.as_bytes(), MapOptions::default()).unwrap();
    assert_eq!(map.addresses(), ENTRIES);
    let naive: HashSet<String> = text.lines().map(str::to_ascii_lowercase).collect();

    // Spread over the map: every 997th address.
    let pick = |f: &dyn Fn(usize) -> String| -> Vec<String> {
        (0..BATCH).map(|k| f(k * 997 % ENTRIES)).collect()
    };
    let sets = [
        ("known", pick(&|i| format!("User{i}@Example.COM")), BATCH),
        ("unknown", pick(&|i| format!("nobody{i}@{DOMAIN}")), 0),
        (
            "extension",
            pick(&|i| format!("user{i}+news@{DOMAIN}")),
            BATCH,
        ),
    ];

    let mut g = c.benchmark_group("recipients");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, addrs, want) in &sets {
        g.bench_function(format!("{name}_ringmx"), |b| {
            b.iter(|| {
                let found = addrs
                    .iter()
                    .filter(|a| map.lookup(black_box(a), DOMAIN) == Lookup::Exists)
                    .count();
                assert_eq!(found, *want);
                found
            })
        });
        g.bench_function(format!("{name}_naive"), |b| {
            b.iter(|| {
                let found = addrs
                    .iter()
                    .filter(|a| {
                        let a = black_box(a).to_ascii_lowercase();
                        if naive.contains(&a) {
                            return true;
                        }
                        let (local, domain) = a.rsplit_once('@').unwrap_or((&a, ""));
                        match local.split_once('+') {
                            Some((base, _)) => naive.contains(&format!("{base}@{domain}")),
                            None => false,
                        }
                    })
                    .count();
                assert_eq!(found, *want);
                found
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
