//! `holdfast what-if`: days a training run takes with failures (see [`crate::reports`]).

pub use crate::reports::WhatIfArgs as Args;

pub async fn run(args: Args) -> anyhow::Result<i32> {
    crate::reports::what_if(args).await
}
