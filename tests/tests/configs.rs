//! The example configurations shipped in deploy/ parse and validate.

use domicile_gateway::GatewayConfig;
use domicile_node::NodeConfig;

/// An example file, with its paths relative to the repository root made absolute.
fn example(name: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("deploy/examples").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("\"deploy/", &format!("\"{}/deploy/", root.display()))
}

#[test]
fn example_configurations_are_valid_and_consistent() {
    let gateway = GatewayConfig::from_toml(&example("gateway.toml")).unwrap();
    for region in &gateway.regions {
        let node = NodeConfig::from_toml(&example(&format!("node-{}.toml", region.id))).unwrap();
        assert_eq!(node.region_id, region.id);
        assert_eq!(node.countries, region.countries);
        assert_eq!(format!("https://{}", node.listen), region.endpoints[0]);
        assert_eq!(
            node.tls.as_ref().unwrap().gateway_identity,
            "gateway.domicile"
        );
        // The policy directory the examples name (relative to the repository root) loads.
        domicile_node::domain::policy::PolicySet::load(node.policy_dir.as_deref(), &node.countries)
            .unwrap();
    }
}

#[test]
fn a_bad_policy_file_stops_the_node_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/DE.toml");
    let text = std::fs::read_to_string(shipped).unwrap().replace(
        "epsilon_per_release_month = 3.0",
        "epsilon_per_release_month = \"lots\"",
    );
    let line = text.lines().position(|l| l.contains("\"lots\"")).unwrap() + 1;
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("DE.toml"), text).unwrap();

    let mut config = NodeConfig::new("eu-de", &["DE"], dir.path().join("node.sqlite"));
    config.insecure_plaintext = true;
    config.policy_dir = Some(policies.clone());
    let err = domicile_node::Node::open(config).unwrap_err().to_string();
    let expected = format!(
        "{}:{line}: privacy.epsilon_per_release_month:",
        policies.join("DE.toml").display()
    );
    assert!(err.contains(&expected), "{err}");
    // Nothing was created for a node that did not start.
    let created: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(created, ["policies"]);
}
