//! The merge algebra of partial aggregates.
//!
//! A region answers an aggregate with [`AggregateStats`] per group: sufficient statistics
//! (counts, sums, an NPS histogram) that merge by addition. Merging is associative and
//! commutative with the empty statistics as identity — a commutative monoid — so the gateway can
//! combine regions' partials in whatever order they arrive. Distinct subjects add up exactly
//! because a subject lives in exactly one region. Metrics are computed only at the end, from the
//! merged statistics ([`metric_value`]).

use std::collections::BTreeMap;

use crate::pb::{
    AggregateGroup, AggregateStats, Channel, GroupKey, Metric, MetricValue, PartialGroup,
};

/// Number of NPS buckets (scores 0 to 10).
pub const NPS_BUCKETS: usize = 11;

impl AggregateStats {
    /// Adds `other` into `self`. Counters saturate instead of overflowing.
    pub fn merge(&mut self, other: &AggregateStats) {
        self.interactions = self.interactions.saturating_add(other.interactions);
        self.distinct_subjects = self
            .distinct_subjects
            .saturating_add(other.distinct_subjects);
        if self.nps_histogram.len() < other.nps_histogram.len() {
            self.nps_histogram.resize(other.nps_histogram.len(), 0);
        }
        for (mine, theirs) in self.nps_histogram.iter_mut().zip(&other.nps_histogram) {
            *mine = mine.saturating_add(*theirs);
        }
        self.csat_sum = self.csat_sum.saturating_add(other.csat_sum);
        self.csat_responses = self.csat_responses.saturating_add(other.csat_responses);
        self.ces_sum = self.ces_sum.saturating_add(other.ces_sum);
        self.ces_responses = self.ces_responses.saturating_add(other.ces_responses);
        self.handle_time_sum_seconds = self
            .handle_time_sum_seconds
            .saturating_add(other.handle_time_sum_seconds);
        self.handle_time_count = self
            .handle_time_count
            .saturating_add(other.handle_time_count);
    }

    /// `a` merged with `b`, leaving both untouched.
    pub fn merged(a: &AggregateStats, b: &AggregateStats) -> AggregateStats {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    /// Statistics with trailing empty NPS buckets removed, so that equal statistics compare
    /// equal whatever the histogram's stored length.
    pub fn normalized(mut self) -> AggregateStats {
        while self.nps_histogram.last() == Some(&0) {
            self.nps_histogram.pop();
        }
        self
    }
}

/// Total number of NPS answers.
fn nps_responses(stats: &AggregateStats) -> u64 {
    stats.nps_histogram.iter().sum()
}

fn mean(sum: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum as f64 / n as f64)
}

/// Computes one metric from merged statistics.
pub fn metric_value(metric: Metric, stats: &AggregateStats) -> MetricValue {
    let (value, sample_size) = match metric {
        Metric::Unspecified => (None, 0),
        Metric::Count => (Some(stats.interactions as f64), stats.interactions),
        Metric::DistinctSubjects => (
            Some(stats.distinct_subjects as f64),
            stats.distinct_subjects,
        ),
        Metric::Nps => {
            let n = nps_responses(stats);
            let bucket = |i: usize| stats.nps_histogram.get(i).copied().unwrap_or(0);
            let promoters = bucket(9) + bucket(10);
            let detractors: u64 = (0..=6).map(bucket).sum();
            let value = (n > 0).then(|| 100.0 * (promoters as f64 - detractors as f64) / n as f64);
            (value, n)
        }
        Metric::CsatMean => (
            mean(stats.csat_sum, stats.csat_responses),
            stats.csat_responses,
        ),
        Metric::CesMean => (
            mean(stats.ces_sum, stats.ces_responses),
            stats.ces_responses,
        ),
        Metric::HandleTimeMean => (
            mean(stats.handle_time_sum_seconds, stats.handle_time_count),
            stats.handle_time_count,
        ),
        Metric::HandleTimeSum => (
            Some(stats.handle_time_sum_seconds as f64),
            stats.handle_time_count,
        ),
    };
    MetricValue {
        metric: metric as i32,
        value,
        sample_size,
    }
}

/// A group key in a form that orders and compares: (region, country, channel, period).
pub type KeyTuple = (String, String, i32, String);

/// The ordered form of a [`GroupKey`].
pub fn key_tuple(key: &GroupKey) -> KeyTuple {
    (
        key.region_id.clone(),
        key.country.clone(),
        key.channel,
        key.period.clone(),
    )
}

fn key_from_tuple((region_id, country, channel, period): KeyTuple) -> GroupKey {
    GroupKey {
        region_id,
        country,
        channel: Channel::try_from(channel).map_or(0, |c| c as i32),
        period,
    }
}

/// Partial answers from any number of regions, merged group by group.
#[derive(Debug, Default, Clone)]
pub struct MergedGroups {
    groups: BTreeMap<KeyTuple, (AggregateStats, u32)>,
}

impl MergedGroups {
    /// Nothing merged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one region's partial groups in.
    pub fn add_region(&mut self, groups: impl IntoIterator<Item = PartialGroup>) {
        for group in groups {
            let key = key_tuple(&group.key.unwrap_or_default());
            let stats = group.stats.unwrap_or_default();
            let entry = self.groups.entry(key).or_default();
            entry.0.merge(&stats);
            entry.1 += 1;
        }
    }

    /// Merges another set of merged groups in (the monoid operation on whole answers).
    pub fn merge(&mut self, other: MergedGroups) {
        for (key, (stats, regions)) in other.groups {
            let entry = self.groups.entry(key).or_default();
            entry.0.merge(&stats);
            entry.1 += regions;
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when there is no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The merged groups, sorted by key, with the requested metrics computed.
    pub fn finish(self, metrics: &[Metric]) -> Vec<AggregateGroup> {
        self.groups
            .into_iter()
            .map(|(key, (stats, regions))| AggregateGroup {
                key: Some(key_from_tuple(key)),
                values: metrics.iter().map(|m| metric_value(*m, &stats)).collect(),
                stats: Some(stats),
                contributing_regions: regions,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats() -> impl Strategy<Value = AggregateStats> {
        (
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(0u64..1_000_000, 0..=NPS_BUCKETS),
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
            (any::<u32>(), any::<u32>()),
        )
            .prop_map(|(i, d, h, (cs, cr, es, er), (ht, hc))| AggregateStats {
                interactions: i.into(),
                distinct_subjects: d.into(),
                nps_histogram: h,
                csat_sum: cs.into(),
                csat_responses: cr.into(),
                ces_sum: es.into(),
                ces_responses: er.into(),
                handle_time_sum_seconds: ht.into(),
                handle_time_count: hc.into(),
            })
    }

    fn partials() -> impl Strategy<Value = Vec<PartialGroup>> {
        prop::collection::vec(
            (0usize..3, 0i32..3, stats()).prop_map(|(c, ch, s)| PartialGroup {
                key: Some(GroupKey {
                    country: ["DE", "FR", "US"][c].into(),
                    channel: ch,
                    ..Default::default()
                }),
                stats: Some(s),
            }),
            0..6,
        )
    }

    fn norm(groups: Vec<AggregateGroup>) -> Vec<(GroupKey, AggregateStats)> {
        groups
            .into_iter()
            .map(|g| (g.key.unwrap(), g.stats.unwrap().normalized()))
            .collect()
    }

    proptest! {
        #[test]
        fn merge_is_associative(a in stats(), b in stats(), c in stats()) {
            let left = AggregateStats::merged(&AggregateStats::merged(&a, &b), &c);
            let right = AggregateStats::merged(&a, &AggregateStats::merged(&b, &c));
            prop_assert_eq!(left.normalized(), right.normalized());
        }

        #[test]
        fn merge_is_commutative(a in stats(), b in stats()) {
            prop_assert_eq!(
                AggregateStats::merged(&a, &b).normalized(),
                AggregateStats::merged(&b, &a).normalized()
            );
        }

        #[test]
        fn empty_stats_are_the_identity(a in stats()) {
            let e = AggregateStats::default();
            prop_assert_eq!(AggregateStats::merged(&a, &e).normalized(), a.clone().normalized());
            prop_assert_eq!(AggregateStats::merged(&e, &a).normalized(), a.normalized());
        }

        #[test]
        fn region_order_does_not_change_the_answer(regions in prop::collection::vec(partials(), 0..5)) {
            let mut forward = MergedGroups::new();
            for r in regions.iter().cloned() {
                forward.add_region(r);
            }
            let mut backward = MergedGroups::new();
            for r in regions.iter().rev().cloned() {
                backward.add_region(r);
            }
            // Merging pairwise-merged halves gives the same as merging one by one.
            let mid = regions.len() / 2;
            let mut left = MergedGroups::new();
            for r in regions[..mid].iter().cloned() { left.add_region(r); }
            let mut right = MergedGroups::new();
            for r in regions[mid..].iter().cloned() { right.add_region(r); }
            left.merge(right);
            let f = norm(forward.finish(&[Metric::Count]));
            prop_assert_eq!(&f, &norm(backward.finish(&[Metric::Count])));
            prop_assert_eq!(&f, &norm(left.finish(&[Metric::Count])));
        }
    }

    #[test]
    fn nps_is_promoters_minus_detractors() {
        // 2 promoters, 1 passive, 1 detractor: (2 - 1) / 4 = 25.
        let mut h = vec![0; NPS_BUCKETS];
        h[10] = 1;
        h[9] = 1;
        h[8] = 1;
        h[3] = 1;
        let s = AggregateStats {
            nps_histogram: h,
            ..Default::default()
        };
        let v = metric_value(Metric::Nps, &s);
        assert_eq!(v.value, Some(25.0));
        assert_eq!(v.sample_size, 4);
        assert_eq!(metric_value(Metric::CsatMean, &s).value, None);
    }
}
