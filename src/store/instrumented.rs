//! A [`Store`] that counts and times every call of the store it wraps, for either backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use secrecy::SecretString;

use super::{
    CertificateChange, CertificateRecord, Mapping, MappingSpec, NewCertificate, Store, StoreError,
    StoredP12,
};
use crate::ids::{AccountId, CertificateId, MappingId};

/// Wraps a backend; `operation` labels are the [`Store`] method names.
#[derive(Debug)]
pub struct InstrumentedStore(Arc<dyn Store>);

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self(inner)
    }

    async fn measured<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        crate::metrics::global().store_call(
            self.0.kind(),
            operation,
            result.is_ok(),
            started.elapsed(),
        );
        result
    }
}

#[async_trait]
impl Store for InstrumentedStore {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn create_certificate(
        &self,
        new: NewCertificate,
    ) -> Result<CertificateRecord, StoreError> {
        self.measured("create_certificate", self.0.create_certificate(new))
            .await
    }

    async fn update_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        change: CertificateChange,
    ) -> Result<CertificateRecord, StoreError> {
        let call = self.0.update_certificate(account, id, change);
        self.measured("update_certificate", call).await
    }

    async fn certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<CertificateRecord, StoreError> {
        self.measured("certificate", self.0.certificate(account, id))
            .await
    }

    async fn certificate_secret(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<StoredP12, StoreError> {
        let call = self.0.certificate_secret(account, id);
        self.measured("certificate_secret", call).await
    }

    async fn certificates(
        &self,
        account: &AccountId,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.measured("certificates", self.0.certificates(account))
            .await
    }

    async fn delete_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        force: bool,
    ) -> Result<(), StoreError> {
        let call = self.0.delete_certificate(account, id, force);
        self.measured("delete_certificate", call).await
    }

    async fn create_mapping(
        &self,
        account: &AccountId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError> {
        self.measured("create_mapping", self.0.create_mapping(account, spec))
            .await
    }

    async fn update_mapping(
        &self,
        account: &AccountId,
        id: MappingId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError> {
        let call = self.0.update_mapping(account, id, spec);
        self.measured("update_mapping", call).await
    }

    async fn mapping(&self, account: &AccountId, id: MappingId) -> Result<Mapping, StoreError> {
        self.measured("mapping", self.0.mapping(account, id)).await
    }

    async fn mappings(&self, account: &AccountId) -> Result<Vec<Mapping>, StoreError> {
        self.measured("mappings", self.0.mappings(account)).await
    }

    async fn delete_mapping(&self, account: &AccountId, id: MappingId) -> Result<(), StoreError> {
        self.measured("delete_mapping", self.0.delete_mapping(account, id))
            .await
    }

    async fn accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        self.measured("accounts", self.0.accounts()).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.measured("revision", self.0.revision()).await
    }

    async fn consumer_secret(&self, key: &str) -> Result<Option<SecretString>, StoreError> {
        self.measured("consumer_secret", self.0.consumer_secret(key))
            .await
    }
}
