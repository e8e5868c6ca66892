//! Redaction: arbitrary UTF-8 as a comment (the first byte picks the country's rules, the
//! second splits off a subject name), through every detector. Never a panic, and the spans
//! are ordered, disjoint and on character boundaries. (An IBAN-shaped string with a wrong
//! checksum panicked before issue 27.)
#![no_main]

use domicile_node::privacy::redact::Redactor;
use libfuzzer_sys::fuzz_target;

const COUNTRIES: [&str; 11] = ["DE", "FR", "IT", "ES", "NL", "GB", "US", "BR", "JP", "CN", "XX"];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, rest)) = rest.split_first() else {
        return;
    };
    let Ok(all) = std::str::from_utf8(rest) else {
        return;
    };
    let mut at = usize::from(cut).min(all.len());
    while !all.is_char_boundary(at) {
        at -= 1;
    }
    let (name, text) = all.split_at(at);
    let out = Redactor::for_country(COUNTRIES[usize::from(which) % COUNTRIES.len()])
        .redact(text, &[name]);
    let mut end = 0;
    for (_, r) in &out.spans {
        assert!(r.start >= end && r.start < r.end && r.end <= text.len());
        assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
        end = r.end;
    }
});
