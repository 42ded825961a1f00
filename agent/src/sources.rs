//! The remote edge: what IMDS and EC2 say about this instance and its peers.
//!
//! Thin on purpose: it fetches, and the pure modules (config, discovery) judge what came back.

use std::collections::BTreeMap;

use berth_ec2::imds::BERTH_TAG_KEYS;
use berth_ec2::{
    Credentials, Ec2Client, Ec2Error, Filter, Identity, ImdsClient, ImdsError, Instance,
    ParameterType, PutOutcome, RetryPolicy, SsmClient, SsmError,
};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("{0}; masters need ssm:GetParameter and ssm:PutParameter on parameter/berth/CLUSTER/master/* (docs/iam.md)")]
    Ssm(#[from] SsmError),
    #[error(
        "the instance has no IAM role in IMDS (meta-data/iam/security-credentials/ is empty); \
         attach an instance profile allowing ec2:DescribeInstances{0}"
    )]
    NoRole(&'static str),
}

impl SourceError {
    /// True when IMDS answered with a value berth needs and cannot use (an IPv6-only subnet, a
    /// host name that is none, an over-long tag): the instance's configuration is at fault, not
    /// IMDS, and retrying will not help. The message names the item and the fix.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, SourceError::Imds(e) if e.is_invalid_metadata())
    }
}

/// Where the tags came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TagSource {
    /// IMDS `meta-data/tags/instance/` (instance metadata tags enabled).
    Imds,
    /// EC2 DescribeTags, because IMDS tags are off.
    DescribeTags,
}

/// What this instance learns about itself at the start of a run.
#[derive(Debug, Clone)]
pub struct Sources {
    pub identity: Identity,
    pub tags: BTreeMap<String, String>,
    pub tag_source: TagSource,
    pub user_data: Option<Vec<u8>>,
}

/// The two remote clients of one agent, kept across the reconcile loop so that the IMDS token
/// and the role credentials are cached and refreshed rather than fetched each time.
pub struct Remote {
    pub imds: ImdsClient,
    ec2_endpoint: Option<Url>,
    /// The endpoint came from the command line: configuration does not override it.
    endpoint_from_cli: bool,
    ec2: Option<Ec2Client>,
    ssm_endpoint: Option<Url>,
    ssm: Option<SsmClient>,
}

impl Remote {
    pub fn new(imds_endpoints: Vec<Url>, ec2_endpoint: Option<Url>) -> Remote {
        let endpoints = if imds_endpoints.is_empty() {
            ImdsClient::default_endpoints()
        } else {
            imds_endpoints
        };
        Remote {
            imds: ImdsClient::new(endpoints, RetryPolicy::imds_boot()),
            endpoint_from_cli: ec2_endpoint.is_some(),
            ec2_endpoint,
            ec2: None,
            ssm_endpoint: None,
            ssm: None,
        }
    }

    /// The Parameter Store endpoint (default `https://ssm.REGION.amazonaws.com/`).
    pub fn with_ssm_endpoint(mut self, endpoint: Option<Url>) -> Remote {
        self.ssm_endpoint = endpoint;
        self
    }

    fn ssm(&mut self, region: &str) -> &SsmClient {
        if self.ssm.as_ref().map(SsmClient::region) != Some(region) {
            let endpoint = self
                .ssm_endpoint
                .clone()
                .unwrap_or_else(|| SsmClient::default_endpoint(region));
            self.ssm = Some(SsmClient::new(
                endpoint,
                region.to_string(),
                SsmClient::default_policy(),
            ));
        }
        self.ssm.as_ref().expect("set above")
    }

    /// Runs a Parameter Store call with the role's credentials, once more with fresh ones when
    /// SSM says they expired.
    async fn with_ssm<T, F>(&mut self, region: &str, call: F) -> Result<T, SourceError>
    where
        F: AsyncFn(&SsmClient, Credentials) -> Result<T, SsmError>,
    {
        let why = " and ssm:GetParameter/PutParameter on the cluster's path (docs/iam.md)";
        let creds = self.credentials(why).await?;
        self.ssm(region);
        let ssm = self.ssm.as_ref().expect("created above");
        match call(ssm, creds).await {
            Err(e) if e.is_expired_credentials() => {
                let creds = self
                    .imds
                    .refresh_credentials()
                    .await?
                    .ok_or(SourceError::NoRole(why))?;
                Ok(call(ssm, creds).await?)
            }
            other => Ok(other?),
        }
    }

    /// A parameter's decrypted value; `None` when it does not exist.
    pub async fn parameter(
        &mut self,
        region: &str,
        name: &str,
    ) -> Result<Option<String>, SourceError> {
        self.with_ssm(region, async |ssm: &SsmClient, creds: Credentials| {
            ssm.get_parameter(&creds, name, true).await
        })
        .await
        .map(|p| p.map(|p| p.value))
    }

    /// Puts a parameter; with `overwrite` false, true only when this call created it.
    pub async fn put_parameter(
        &mut self,
        region: &str,
        name: &str,
        value: &str,
        secure: bool,
        overwrite: bool,
    ) -> Result<bool, SourceError> {
        let kind = if secure {
            ParameterType::SecureString
        } else {
            ParameterType::String
        };
        let out = self
            .with_ssm(region, async |ssm: &SsmClient, creds: Credentials| {
                ssm.put_parameter(&creds, name, value, kind, overwrite)
                    .await
            })
            .await?;
        Ok(matches!(out, PutOutcome::Created { .. }))
    }

    /// The EC2 endpoint the configuration names, unless the command line named one.
    pub fn configure_ec2_endpoint(&mut self, endpoint: Option<&str>) {
        if self.endpoint_from_cli {
            return;
        }
        let url = endpoint.and_then(|e| Url::parse(e).ok());
        if url != self.ec2_endpoint {
            self.ec2_endpoint = url;
            self.ec2 = None;
        }
    }

    fn ec2(&mut self, region: &str) -> &Ec2Client {
        if self.ec2.as_ref().map(Ec2Client::region) != Some(region) {
            let endpoint = self
                .ec2_endpoint
                .clone()
                .unwrap_or_else(|| Ec2Client::default_endpoint(region));
            self.ec2 = Some(Ec2Client::new(
                endpoint,
                region.to_string(),
                RetryPolicy::ec2_discovery(),
            ));
        }
        self.ec2.as_ref().expect("set above")
    }

    async fn credentials(&self, why: &'static str) -> Result<Credentials, SourceError> {
        self.imds
            .credentials()
            .await?
            .ok_or(SourceError::NoRole(why))
    }

    /// Identity, tags and user-data.
    pub async fn sources(&mut self) -> Result<Sources, SourceError> {
        let identity = self.imds.identity().await?;
        let user_data = self.imds.user_data().await?;
        let (tags, tag_source) = match self.imds.tags(&BERTH_TAG_KEYS).await? {
            Some(tags) => (tags, TagSource::Imds),
            None => {
                // Only the tags berth reads: whatever else the instance carries costs nothing.
                let filters = [
                    Filter::new("resource-id", [identity.instance_id.clone()]),
                    Filter::new("key", BERTH_TAG_KEYS),
                ];
                let described = self
                    .with_credentials(
                        &identity.region,
                        " and ec2:DescribeTags (IMDS tags are off)",
                        async |ec2: &Ec2Client, creds: Credentials| {
                            ec2.describe_tags(&creds, &filters).await
                        },
                    )
                    .await?;
                let tags = described
                    .into_iter()
                    .filter(|t| {
                        t.resource_id == identity.instance_id
                            && BERTH_TAG_KEYS.contains(&t.key.as_str())
                    })
                    .map(|t| (t.key, t.value))
                    .collect();
                (tags, TagSource::DescribeTags)
            }
        };
        Ok(Sources {
            identity,
            tags,
            tag_source,
            user_data,
        })
    }

    /// DescribeInstances with `filters`, every page; also the number of pages it took.
    pub async fn describe_instances(
        &mut self,
        region: &str,
        filters: &[Filter],
    ) -> Result<(Vec<Instance>, u32), SourceError> {
        let paged = self
            .with_credentials(region, "", async |ec2: &Ec2Client, creds: Credentials| {
                ec2.describe_instances_pages(&creds, filters).await
            })
            .await?;
        Ok((paged.items, paged.pages))
    }

    /// Runs an EC2 call with the role's credentials; when EC2 says they expired (IMDS rotates
    /// them, and a clock step can outdate a cached set), fetches fresh ones and tries once more.
    async fn with_credentials<T, F>(
        &mut self,
        region: &str,
        why: &'static str,
        call: F,
    ) -> Result<T, SourceError>
    where
        F: AsyncFn(&Ec2Client, Credentials) -> Result<T, Ec2Error>,
    {
        let creds = self.credentials(why).await?;
        self.ec2(region);
        let ec2 = self.ec2.as_ref().expect("created above");
        match call(ec2, creds).await {
            Err(e) if e.is_expired_credentials() => {
                log::warn!("EC2 says the role credentials expired; fetching fresh ones from IMDS");
                let creds = self
                    .imds
                    .refresh_credentials()
                    .await?
                    .ok_or(SourceError::NoRole(why))?;
                Ok(call(ec2, creds).await?)
            }
            other => Ok(other?),
        }
    }
}
