//! The cold-start baseline: the smallest useful `lambda_http` function. Every
//! Ledgerline function is measured against this binary in the same run.

use lambda_http::{service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::run(service_fn(|_req: Request| async {
        Ok::<_, Error>("hello")
    }))
    .await
}
