//! The route table. Every route is added through [`RouteTable::add`], which records its
//! method, path and access rule and attaches the matching guard, so the list of routes the
//! router serves, the RBAC matrix test and the OpenAPI test all read the same facts.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodFilter, on};

use crate::AppState;
use crate::http::{guard, ratelimit};
use crate::rbac::Permission;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Operations endpoints (health, metrics): no login, no rate limit, since load
    /// balancers and scrapers poll them.
    Infra,
    /// No login; counted by the per-client rate limit.
    Public,
    /// A gateway: the request is signed with the gateway's key (see `link::gwauth`); the
    /// handler's extractor checks it. No user login, no per-client rate limit.
    Gateway,
    /// Any logged-in user.
    Authenticated,
    /// A logged-in user whose role has this permission.
    Perm(Permission),
}

/// One served route.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// Builds the router while recording what it serves.
#[derive(Debug)]
pub struct RouteTable {
    router: Router<AppState>,
    specs: Vec<RouteSpec>,
    state: AppState,
}

impl RouteTable {
    pub fn new(state: AppState) -> RouteTable {
        RouteTable {
            router: Router::new(),
            specs: Vec::new(),
            state,
        }
    }

    pub fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        let mut mr = on(filter, handler);
        mr = match access {
            Access::Infra | Access::Gateway => mr,
            Access::Public => {
                mr.route_layer(from_fn_with_state(self.state.clone(), ratelimit::limit))
            }
            Access::Authenticated | Access::Perm(_) => mr.route_layer(from_fn_with_state(
                (self.state.clone(), access),
                guard::require,
            )),
        };
        self.router = self.router.route(path, mr);
        self.specs.push(RouteSpec {
            method,
            path,
            access,
        });
        self
    }

    pub fn finish(self) -> (Router<AppState>, Vec<RouteSpec>) {
        (self.router, self.specs)
    }
}
