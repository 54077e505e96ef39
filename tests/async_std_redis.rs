//! The async-std adapter against a real `redis-server` and a mock token endpoint, each test
//! under `async_std::task::block_on`.

mod common;

use common::async_scenarios::{self as scenario, TestRuntime};
use redis_entraid::async_std::AsyncStd;

#[test]
fn multiplexed_through_renewals() {
    AsyncStd::block_on(scenario::multiplexed_through_renewals::<AsyncStd>());
}

#[test]
fn manager_survives_restart() {
    AsyncStd::block_on(scenario::manager_survives_restart::<AsyncStd>());
}

#[test]
fn stalled_subscriber_does_not_delay_renewal() {
    AsyncStd::block_on(scenario::stalled_subscriber_does_not_delay_renewal::<
        AsyncStd,
    >());
}

#[test]
fn resp3_subscriber_keeps_receiving() {
    AsyncStd::block_on(scenario::resp3_subscriber_keeps_receiving::<AsyncStd>());
}

#[test]
fn first_token_wait_never_blocks_executor() {
    AsyncStd::block_on(scenario::first_token_wait_never_blocks_executor::<AsyncStd>());
}

#[test]
fn connection_keeps_renewal_alive() {
    AsyncStd::block_on(scenario::connection_keeps_renewal_alive::<AsyncStd>());
}
