//! CustomResourceDefinitions end to end: a CRD makes its kind served, objects are pruned,
//! defaulted and validated by the schema, printer columns show in `kubectl get`, the status and
//! scale subresources work, several versions share one storage version, and deleting the CRD
//! deletes its objects.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer, header, table};

backend_tests!(
    crd_lifecycle,
    crd_versions_share_storage,
    invalid_crds_are_refused
);

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: string, enum: [s, m, l]}
              replicas: {type: integer, minimum: 0, maximum: 10, default: 1}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#;

/// Waits until `kubectl get RESOURCE` answers, which is when the kind is served.
fn wait_served(server: &TestServer, resource: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if server.kubectl(&["get", resource, "-A"]).status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{resource} was not served within 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn crd_lifecycle(backend: Backend) {
    let server = TestServer::start(backend);
    let out = server.ok_stdin(&["apply", "--validate=false", "-f", "-"], WIDGETS);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{out}"
    );
    wait_served(&server, "widgets");
    let crd = server.json(&["get", "crd", "widgets.example.com"]);
    let conditions = crd["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    for wanted in ["NamesAccepted", "Established"] {
        let c = conditions
            .iter()
            .find(|c| c["type"] == wanted)
            .unwrap_or_else(|| panic!("no {wanted} condition: {crd}"));
        assert_eq!(c["status"], "True", "{crd}");
    }
    assert!(
        server
            .ok(&["api-resources", "--api-group=example.com"])
            .contains("widgets")
    );

    // Unknown fields are pruned and defaults filled in.
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: m, colour: red}\n";
    server.ok_stdin(&["apply", "--validate=false", "-f", "-"], widget);
    let w1 = server.json(&["get", "wd", "w1"]);
    assert_eq!(
        w1["spec"],
        serde_json::json!({"size": "m", "replicas": 1}),
        "{w1}"
    );
    assert_eq!(w1["metadata"]["generation"], 1);

    // Printer columns.
    let out = server.ok(&["get", "widgets"]);
    assert_eq!(header(&out), ["NAME", "SIZE", "REPLICAS", "AGE"]);
    assert_eq!(&table(&out)[1][..3], ["w1", "m", "1"]);

    // The schema refuses bad objects with upstream's messages.
    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: xl, replicas: 20}\n";
    let err = server.fails_stdin(&["apply", "--validate=false", "-f", "-"], bad);
    assert!(
        err.contains(r#"spec.size: Unsupported value: "xl": supported values: "s", "m", "l""#),
        "{err}"
    );
    assert!(err.contains("spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10"), "{err}");
    let missing =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {replicas: 2}\n";
    let err = server.fails_stdin(&["apply", "--validate=false", "-f", "-"], missing);
    assert!(err.contains("spec.size: Required value"), "{err}");

    // Scale and status subresources.
    assert_eq!(
        server.ok(&["scale", "wd", "w1", "--replicas=4"]).trim(),
        "widget.example.com/w1 scaled"
    );
    assert_eq!(server.json(&["get", "wd", "w1"])["spec"]["replicas"], 4);
    server.ok(&[
        "patch",
        "wd",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4}}"#,
    ]);
    let w1 = server.json(&["get", "wd", "w1"]);
    assert_eq!(w1["status"]["replicas"], 4);
    assert_eq!(
        w1["metadata"]["generation"], 2,
        "a status change must not bump generation: {w1}"
    );
    // The main endpoint ignores status.
    server.ok(&[
        "patch",
        "wd",
        "w1",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ]);
    assert_eq!(server.json(&["get", "wd", "w1"])["status"]["replicas"], 4);

    // The category makes it part of `kubectl get all`.
    assert!(server.ok(&["get", "all"]).contains("widget.example.com/w1"));

    // Deleting the CRD deletes its objects, then the kind stops being served.
    server.ok(&["delete", "crd", "widgets.example.com", "--timeout=30s"]);
    let err = server.fails(&["get", "widgets"]);
    assert!(
        err.contains("the server doesn't have a resource type \"widgets\"")
            || err.contains("could not find the requested resource"),
        "{err}"
    );
    let raw = server.raw(
        http::Method::GET,
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        "",
    );
    assert_eq!(raw.0.as_u16(), 404, "{}", raw.1);
}

fn crd_versions_share_storage(backend: Backend) {
    let server = TestServer::start(backend);
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Cluster
  names: {plural: gadgets, kind: Gadget}
  versions:
  - {name: v1beta1, served: true, storage: false, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
"#;
    server.ok_stdin(&["apply", "--validate=false", "-f", "-"], crd);
    wait_served(&server, "gadgets");
    server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        "apiVersion: example.com/v1beta1\nkind: Gadget\nmetadata: {name: g}\nspec: {x: 1}\n",
    );
    let v1 = server.json(&["get", "gadgets.v1.example.com", "g"]);
    assert_eq!(v1["apiVersion"], "example.com/v1");
    assert_eq!(v1["spec"]["x"], 1);
    let beta = server.json(&["get", "gadgets.v1beta1.example.com", "g"]);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    let crd = server.json(&["get", "crd", "gadgets.example.com"]);
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    // Discovery prefers the GA version.
    let group = server.raw(
        http::Method::GET,
        "/apis/example.com",
        "application/json",
        "",
    );
    assert!(
        group
            .1
            .contains(r#""preferredVersion":{"groupVersion":"example.com/v1","version":"v1"}"#),
        "{}",
        group.1
    );
}

fn invalid_crds_are_refused(backend: Backend) {
    let server = TestServer::start(backend);
    let wrong_name = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: things.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, kind: Widget}
  versions:
  - {name: v1, served: true, storage: false, schema: {openAPIV3Schema: {type: object}}}
"#;
    let err = server.fails_stdin(&["apply", "--validate=false", "-f", "-"], wrong_name);
    assert!(err.contains("is invalid"), "{err}");
    assert!(err.contains("metadata.name"), "{err}");
    assert!(
        err.contains("must have exactly one version marked as storage version"),
        "{err}"
    );
}
