//! The OpenAPI document and the router agree, in both directions.

use crate::on_every_backend;

on_every_backend!(document_matches_the_router);

mod scenarios {
    use std::collections::BTreeSet;

    use reqwest::StatusCode;

    use crate::common::{DbKind, TestApp};

    pub async fn document_matches_the_router(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let (s, doc) = app
            .call(reqwest::Method::GET, "/api/openapi.json", None, None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = app
            .routes
            .iter()
            .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let phantom: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            phantom.is_empty(),
            "documented routes the router does not serve: {phantom:?}"
        );
        assert!(
            served.len() >= 38,
            "the table lists every route ({})",
            served.len()
        );

        // Every $ref points at a schema that exists.
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "dangling $ref to {name}");
        }
        app.stop().await;
    }
}
