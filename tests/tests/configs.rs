//! The example configurations shipped in deploy/ parse and validate.

use domicile_gateway::GatewayConfig;
use domicile_node::NodeConfig;

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn example_configurations_are_valid_and_consistent() {
    let gateway = GatewayConfig::from_toml(&example("gateway.toml")).unwrap();
    for region in &gateway.regions {
        let node = NodeConfig::from_toml(&example(&format!("node-{}.toml", region.id))).unwrap();
        assert_eq!(node.region_id, region.id);
        assert_eq!(node.countries, region.countries);
        assert_eq!(format!("http://{}", node.listen), region.endpoints[0]);
        // The policy directory the examples name (relative to the repository root) loads.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(node.policy_dir.as_ref().unwrap());
        domicile_node::policy::PolicySet::load(Some(&dir), &node.countries).unwrap();
    }
}
