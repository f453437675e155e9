//! The cloud control plane, `dmr-cloud`. Filled in by the cloud issue.
