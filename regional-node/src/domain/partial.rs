//! A region's partial answer, and the rule that releases a group into it: noise first (under
//! differential privacy), then *k* distinct subjects, or the group is only counted as
//! suppressed. Both the rollups ([`crate::domain::rollup`]) and the row scan
//! ([`crate::domain::aggregate`]) release through [`release`].

use std::collections::BTreeMap;

use domicile_proto::pb::{AggregateStats, GroupKey, PartialGroup};
use rand::RngCore;

use crate::{
    domain::consent::Gate,
    privacy::dp::{NoisePlan, noise},
};

/// The privacy rules one aggregate runs under.
pub struct Rules<'a> {
    /// *k* per country (policy *k*, node floor and request, whichever is largest).
    pub k_by_country: BTreeMap<String, u32>,
    /// *k* for groups that mix countries: the largest of `k_by_country`.
    pub k_mixed: u32,
    /// Noise to add, with the randomness to draw it from; `None` releases exact values.
    pub noise: Option<(NoisePlan, &'a mut dyn RngCore)>,
    /// Contribution bounds without noise, `(L, H)`: each subject's first `L` interactions,
    /// handle times clamped to `H` (the exact, bounded values a release then noises).
    pub bounds: Option<(u32, u32)>,
    /// The consent condition of the purpose.
    pub gate: Gate,
}

/// A region's answer before it is put on the wire.
#[derive(Debug, Default, Clone)]
pub struct Partial {
    /// Released groups, each with at least `min_group_size` distinct subjects.
    pub groups: Vec<PartialGroup>,
    /// Number of groups withheld.
    pub suppressed: u64,
    /// The k applied.
    pub min_group_size: u32,
}

/// Releases one group into `partial`, or counts it as suppressed: noise first (when the rules
/// add it), then *k* — the group's country's, or the region's largest for a group without one —
/// against the (noisy) distinct-subject count.
pub fn release(
    rules: &mut Rules<'_>,
    partial: &mut Partial,
    country: Option<&str>,
    mut stats: AggregateStats,
    key: GroupKey,
) {
    let k = country
        .and_then(|c| rules.k_by_country.get(c).copied())
        .unwrap_or(rules.k_mixed);
    if let Some((plan, rng)) = &mut rules.noise {
        add_noise(&mut stats, plan, &mut **rng);
    }
    if stats.distinct_subjects < u64::from(k) {
        partial.suppressed += 1;
        return;
    }
    if stats.nps_histogram.iter().all(|n| *n == 0) {
        stats.nps_histogram.clear();
    }
    partial.groups.push(PartialGroup {
        key: Some(key),
        stats: Some(stats),
    });
}

/// Adds noise to every released family and zeroes the others. Noisy values are clamped at 0
/// (post-processing, which costs no privacy).
fn add_noise(stats: &mut AggregateStats, plan: &NoisePlan, rng: &mut dyn RngCore) {
    let share = plan.families();
    let l = u64::from(plan.max_contributions);
    let mut noisy = |value: u64, sensitivity: u64| {
        let n = noise(rng, plan.epsilon, share, sensitivity);
        (i128::from(value) + i128::from(n)).clamp(0, i128::from(u64::MAX)) as u64
    };
    stats.interactions = noisy(stats.interactions, l);
    stats.distinct_subjects = noisy(stats.distinct_subjects, l);
    // Every interaction adds 1 to one bucket: the histogram as a whole has sensitivity L.
    if plan.nps {
        for bucket in &mut stats.nps_histogram {
            *bucket = noisy(*bucket, l);
        }
    } else {
        stats.nps_histogram.iter_mut().for_each(|b| *b = 0);
    }
    if plan.csat {
        stats.csat_sum = noisy(stats.csat_sum, 5 * l);
        stats.csat_responses = noisy(stats.csat_responses, l);
    } else {
        (stats.csat_sum, stats.csat_responses) = (0, 0);
    }
    if plan.ces {
        stats.ces_sum = noisy(stats.ces_sum, 7 * l);
        stats.ces_responses = noisy(stats.ces_responses, l);
    } else {
        (stats.ces_sum, stats.ces_responses) = (0, 0);
    }
    stats.handle_time_sum_seconds = if plan.handle_sum {
        noisy(
            stats.handle_time_sum_seconds,
            u64::from(plan.handle_time_bound) * l,
        )
    } else {
        0
    };
    stats.handle_time_count = if plan.handle_count {
        noisy(stats.handle_time_count, l)
    } else {
        0
    };
}
