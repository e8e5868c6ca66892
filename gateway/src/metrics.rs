//! The gateway's Prometheus metrics (`domicile_gateway_*`).
//!
//! Labels are method names, region ids, region statuses and status codes: never a tenant's
//! subject, never anything read from a record.

use domicile_ops::metrics::{RegionCallMetrics, RpcMetrics, Source, registered};
use domicile_proto::pb::{RegionCoverage, RegionStatus};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of a region's part in a fan-out.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FanoutLabels {
    /// The gateway method, e.g. `Aggregate`.
    pub method: String,
    /// The region's status in the coverage, e.g. `OK`, `DEADLINE_EXCEEDED`.
    pub status: String,
}

/// Labels naming a method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The gateway method, e.g. `Aggregate`.
    pub method: String,
}

/// Labels naming a region.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    /// Region id.
    pub region: String,
}

/// Labels of a console request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsoleLabels {
    /// One of the console's paths, or `other`.
    pub path: String,
    /// The HTTP status answered.
    pub status: String,
}

/// Every metric the gateway exports. Cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    /// Served calls.
    pub rpc: RpcMetrics,
    /// Calls to regions.
    pub regions: RegionCallMetrics,
    /// Regions' parts in fan-outs, by method and region status.
    pub fanout_regions: Family<FanoutLabels, Counter>,
    /// Fan-outs where at least one region did not answer.
    pub fanout_incomplete: Family<MethodLabels, Counter>,
    /// Aggregate groups released to callers.
    pub groups_released: Counter,
    /// Aggregate groups the regions suppressed (too few subjects).
    pub groups_suppressed: Counter,
    /// Pseudonymised records streamed to callers.
    pub records_released: Counter,
    /// 1 if the region's latest probe succeeded, else 0.
    pub region_up: Family<RegionLabels, Gauge>,
    /// Regions in the directory.
    pub regions_configured: Gauge,
    /// Successful configuration reloads.
    pub reloads: Counter,
    /// Refused configuration reloads (the running configuration was kept).
    pub reload_failures: Counter,
    /// Console requests by path and status.
    pub console_requests: Family<ConsoleLabels, Counter>,
    /// Region endpoints taken out of service after a connection failure.
    pub endpoints_ejected: Family<RegionLabels, Counter>,
    /// Region calls sent a second time because the first attempt never left the gateway.
    pub region_retries: Family<RegionLabels, Counter>,
    /// Audit heads a region presented that do not extend the one the gateway witnessed.
    pub audit_forks: Family<RegionLabels, Counter>,
    /// 1 while a region's latest audit head forks from the witnessed one, else 0.
    pub audit_forked: Family<RegionLabels, Gauge>,
    source: Source,
}

impl GatewayMetrics {
    /// Registers every family in a new registry.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("domicile_gateway");
        let rpc = RpcMetrics::register(&mut r);
        let regions = RegionCallMetrics::register(&mut r);
        Self {
            rpc,
            regions,
            fanout_regions: registered(
                &mut r,
                "fanout_regions",
                "Regions' parts in fan-out calls, by method and the region's coverage status",
            ),
            fanout_incomplete: registered(
                &mut r,
                "fanout_incomplete",
                "Fan-out calls answered without every region asked",
            ),
            groups_released: registered(
                &mut r,
                "groups_released",
                "Aggregate groups released to callers",
            ),
            groups_suppressed: registered(
                &mut r,
                "groups_suppressed",
                "Aggregate groups suppressed by regions for having fewer than k subjects",
            ),
            records_released: registered(
                &mut r,
                "records_released",
                "Pseudonymised records streamed to callers",
            ),
            region_up: registered(
                &mut r,
                "region_up",
                "1 if the region answered its latest health probe, else 0",
            ),
            regions_configured: registered(
                &mut r,
                "regions_configured",
                "Regions in the gateway's directory",
            ),
            reloads: registered(&mut r, "config_reloads", "Configuration reloads applied"),
            reload_failures: registered(
                &mut r,
                "config_reload_failures",
                "Configuration reloads refused; the running configuration was kept",
            ),
            console_requests: registered(
                &mut r,
                "console_requests",
                "Console requests by path (or other) and HTTP status",
            ),
            endpoints_ejected: registered(
                &mut r,
                "region_endpoints_ejected",
                "Region endpoints taken out of service after a connection failure, by region",
            ),
            region_retries: registered(
                &mut r,
                "region_call_retries",
                "Region calls sent again, to another replica or on a new connection, because the first attempt never left the gateway (no connection, or the node was draining), by region",
            ),
            audit_forks: registered(
                &mut r,
                "audit_forks",
                "Audit heads a region presented that do not extend the head the gateway witnessed",
            ),
            audit_forked: registered(
                &mut r,
                "audit_forked",
                "1 while the region's latest audit head forks from the witnessed one, else 0",
            ),
            source: Source::new(r),
        }
    }

    /// The exposition source for `/metrics`.
    pub fn source(&self) -> Source {
        self.source.clone()
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        self.source.encode()
    }

    /// Counts the regions' parts of one fan-out call.
    pub fn observe_coverage(&self, method: &str, coverage: &[RegionCoverage]) {
        let mut incomplete = false;
        for c in coverage {
            let status = RegionStatus::try_from(c.status).unwrap_or(RegionStatus::Unspecified);
            incomplete |= status != RegionStatus::Ok;
            let name = status.as_str_name();
            self.fanout_regions
                .get_or_create(&FanoutLabels {
                    method: method.to_owned(),
                    status: name
                        .strip_prefix("REGION_STATUS_")
                        .unwrap_or(name)
                        .to_owned(),
                })
                .inc();
        }
        if incomplete {
            self.fanout_incomplete
                .get_or_create(&MethodLabels {
                    method: method.to_owned(),
                })
                .inc();
        }
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
