//! The crates' layers (docs/architecture.md): no import circle between the files of
//! `regional-node` or `gateway`, and no import from a lower layer to a higher one.
//!
//! Every `crate::…` path of a file counts, in `use` trees and in code, except in
//! `#[cfg(test)]` items; a path names the longest module it starts with. A module whose layer is
//! not listed fails the test, so a new top-level module has to be placed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use syn::visit::Visit;

/// Module path (`crate`, `store`, `store::vault`, …) → the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The node's layers, bottom first: a module may import from its own layer (without a circle)
/// and from the layers below.
const NODE_LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
    ("store", 1),
    ("privacy", 1),
    ("domain", 2),
    ("node", 3),
    ("api", 4),
    // Test support (`#[cfg(test)]`), above everything.
    ("testing", 9),
];

/// The gateway's layers, bottom first.
const GATEWAY_LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
    ("auth", 0),
    ("limits", 0),
    ("metrics", 0),
    ("deadline", 0),
    ("federation", 1),
    ("gateway", 2),
    ("calls", 3),
    ("api", 4),
];

/// Every `.rs` file under `src`, by module path, with its text.
fn sources(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).expect("under src");
                let mut parts: Vec<String> = rel
                    .with_extension("")
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                let name = match parts.join("::").as_str() {
                    "lib" | "main" => "crate".to_owned(),
                    other => other.to_owned(),
                };
                out.insert(
                    name,
                    std::fs::read_to_string(&path).expect("a readable file"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The `crate::` paths a file uses outside `#[cfg(test)]` items, as segment lists.
#[derive(Default)]
struct Paths {
    module: Vec<String>,
    found: Vec<Vec<String>>,
}

impl Paths {
    /// `segments` made absolute: `crate::a` → `[a]`, `super::a` → the parent's `a`.
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        match segments.first().map(String::as_str) {
            Some("crate") => Some(segments[1..].to_vec()),
            Some("super") => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                Some(base)
            }
            _ => None,
        }
    }

    fn add(&mut self, segments: Vec<String>) {
        if let Some(path) = self.absolute(&segments) {
            self.found.push(path);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.add(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.add(full);
            }
            syn::UseTree::Glob(_) => self.add(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| matches!(m, syn::Meta::Path(p) if p.is_ident("test")))
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        Fn(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        Type(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_cfg_test(item_attrs(item)) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    // `pub(super)` and `pub(in …)` name who may see an item, not what it imports.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.add(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The modules declared `#[cfg(test)] mod name;` in their parent's file: test code, like a
/// `#[cfg(test)]` item, which may use test support from any layer.
fn test_modules(sources: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (module, text) in sources {
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{module}: {e}"));
        for item in &file.items {
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
                && is_cfg_test(&m.attrs)
            {
                out.insert(match module.as_str() {
                    "crate" => m.ident.to_string(),
                    parent => format!("{parent}::{}", m.ident),
                });
            }
        }
    }
    out
}

/// Each module's imports of the crate's other modules (test-only modules left out).
fn graph(sources: &BTreeMap<String, String>) -> Graph {
    let tests = test_modules(sources);
    let sources: BTreeMap<String, String> = sources
        .iter()
        .filter(|(module, _)| !tests.contains(*module))
        .map(|(m, t)| (m.clone(), t.clone()))
        .collect();
    let sources = &sources;
    let mut graph = Graph::new();
    for (module, text) in sources {
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{module}: {e}"));
        let mut paths = Paths {
            module: if module == "crate" {
                Vec::new()
            } else {
                module.split("::").map(str::to_owned).collect()
            },
            ..Paths::default()
        };
        paths.visit_file(&file);
        let edges = graph.entry(module.clone()).or_default();
        for path in paths.found {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| sources.contains_key(m));
            if let Some(target) = target.filter(|t| t != module) {
                edges.insert(target);
            }
        }
    }
    graph
}

/// The import circles of `graph`: each a list of modules, one path round it.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components; any of more than one module is a circle.
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn connect<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            connect(&mut s, v);
        }
    }
    s.out
}

/// The layer of `module`: its own entry, or its top-level module's.
fn layer(module: &str, layers: &[(&str, u8)]) -> Option<u8> {
    let top = module.split("::").next().unwrap_or(module);
    let of = |name: &str| layers.iter().find(|(n, _)| *n == name).map(|(_, l)| *l);
    of(module).or_else(|| of(top))
}

/// What breaks the layering: circles, imports from a lower layer to a higher one, and modules
/// without a layer.
fn violations(graph: &Graph, layers: &[(&str, u8)]) -> Vec<String> {
    let mut out: Vec<String> = circles(graph)
        .into_iter()
        .map(|c| {
            // The imports inside the circle, so that the one to cut can be seen.
            let edges: Vec<String> = c
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| c.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            format!("import circle: {} ({})", c.join(", "), edges.join("; "))
        })
        .collect();
    for (module, imports) in graph {
        if module == "crate" {
            continue;
        }
        let Some(own) = layer(module, layers) else {
            out.push(format!("{module} has no layer"));
            continue;
        };
        for target in imports {
            if layer(target, layers).is_some_and(|l| l > own) {
                out.push(format!("upward import: {module} -> {target}"));
            }
        }
    }
    out
}

fn check(krate: &str, layers: &[(&str, u8)]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let sources = sources(&src);
    assert!(sources.len() > 10, "{krate}: found {} files", sources.len());
    let graph = graph(&sources);
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(
        edges > 30,
        "{krate}: only {edges} imports found: the parser missed them"
    );
    let found = violations(&graph, layers);
    assert!(found.is_empty(), "{krate}:\n{}", found.join("\n"));
}

#[test]
fn the_node_crate_has_no_circles_and_no_upward_imports() {
    check("regional-node", NODE_LAYERS);
}

#[test]
fn the_gateway_crate_has_no_circles_and_no_upward_imports() {
    check("gateway", GATEWAY_LAYERS);
}

/// The check itself finds what it must: a circle, an upward import in code (not only in `use`),
/// a `super::` path, and an unplaced module; `#[cfg(test)]` code (items, and files declared
/// `#[cfg(test)] mod x;`), `pub(super)` and doc comments do not count.
#[test]
fn the_check_finds_circles_upward_imports_and_unplaced_modules() {
    let files = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
        list.iter()
            .map(|(m, t)| ((*m).to_owned(), (*t).to_owned()))
            .collect()
    };
    let layers: &[(&str, u8)] = &[("low", 0), ("high", 1)];
    let clean = files(&[
        ("crate", "pub mod low; pub mod high;"),
        // A test-only file may use anything; `pub(super)` is no import of the parent.
        (
            "low",
            "pub mod a; pub mod b; #[cfg(test)] mod checks; use crate::low::a::f;",
        ),
        ("low::checks", "use crate::high::h;"),
        (
            "low::a",
            "/// See [`crate::high`].\npub(super) fn f() {}\n#[cfg(test)] mod tests { use crate::high::h; }",
        ),
        ("low::b", "use crate::low::a::f; pub fn g() { f() }"),
        ("high", "pub fn h() { crate::low::b::g() }"),
    ]);
    assert_eq!(violations(&graph(&clean), layers), Vec::<String>::new());

    let mut circle = clean.clone();
    circle.insert("low::a".into(), "pub fn f() { super::b::g() }".into());
    assert_eq!(
        violations(&graph(&circle), layers),
        ["import circle: low::a, low::b (low::a -> low::b; low::b -> low::a)"]
    );

    let mut upward = clean.clone();
    upward.insert(
        "low::b".into(),
        "pub fn g() -> usize { crate::high::h(); 1 }".into(),
    );
    assert_eq!(
        violations(&graph(&upward), layers),
        [
            "import circle: high, low::b (high -> low::b; low::b -> high)",
            "upward import: low::b -> high"
        ]
    );

    let mut unplaced = clean;
    unplaced.insert("extra".into(), "use crate::low::a::f;".into());
    assert_eq!(
        violations(&graph(&unplaced), layers),
        ["extra has no layer"]
    );
}
