//! openraft's storage conformance suite, run against the real RocksDB stores.

use keel_storage::Application;
use keel_storage::Error;
use keel_storage::LogStore;
use keel_storage::StateStore;
use keel_storage::Store;
use keel_storage::Txn;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::StorageError;
use tempfile::TempDir;

openraft::declare_raft_types!(
    pub SuiteConfig:
        D = String,
        R = String,
);

/// The suite only writes blank and membership entries; the application has nothing to do.
struct NoApp;

impl Application<SuiteConfig> for NoApp {
    fn apply(
        &self,
        _entry: &openraft::type_config::alias::EntryOf<SuiteConfig>,
        _txn: &mut Txn<'_>,
    ) -> Result<String, Error> {
        Ok(String::new())
    }
}

struct RocksBuilder;

impl StoreBuilder<SuiteConfig, LogStore<SuiteConfig>, StateStore<SuiteConfig, NoApp>, TempDir>
    for RocksBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            TempDir,
            LogStore<SuiteConfig>,
            StateStore<SuiteConfig, NoApp>,
        ),
        StorageError<SuiteConfig>,
    > {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let log = store.log_store();
        let state = store.state_store(NoApp).expect("state store");
        Ok((dir, log, state))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        Suite::test_all(RocksBuilder).await.unwrap();
    });
}
