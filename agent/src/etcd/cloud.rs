//! The tier's [`Cloud`] over the agent's own clients: Parameter Store and DescribeInstances,
//! signed with the instance's role credentials.

use std::collections::BTreeMap;

use berth_ec2::Filter;

use super::tier::Cloud;
use crate::sources::{Remote, SourceError};

/// The most instance ids asked about in one DescribeInstances (EC2 takes up to 1000 filter
/// values; a cluster's members are a handful).
const MAX_IDS: usize = 200;

pub struct AwsCloud<'a> {
    pub remote: &'a mut Remote,
    pub region: &'a str,
}

impl Cloud for AwsCloud<'_> {
    async fn parameter(&mut self, name: &str) -> Result<Option<String>, SourceError> {
        self.remote.parameter(self.region, name).await
    }

    async fn create_parameter(
        &mut self,
        name: &str,
        value: &str,
        secure: bool,
    ) -> Result<bool, SourceError> {
        self.remote
            .put_parameter(self.region, name, value, secure, false)
            .await
    }

    async fn overwrite_parameter(
        &mut self,
        name: &str,
        value: &str,
        secure: bool,
    ) -> Result<(), SourceError> {
        self.remote
            .put_parameter(self.region, name, value, secure, true)
            .await
            .map(drop)
    }

    async fn instance_states(
        &mut self,
        ids: &[String],
    ) -> Result<BTreeMap<String, String>, SourceError> {
        let mut out = BTreeMap::new();
        for chunk in ids.chunks(MAX_IDS) {
            // No state filter: terminated and stopped instances are exactly what is asked.
            let filters = [Filter::new("instance-id", chunk.iter().cloned())];
            let (instances, _) = self
                .remote
                .describe_instances(self.region, &filters)
                .await?;
            for i in instances {
                if chunk.contains(&i.instance_id) {
                    out.insert(i.instance_id, i.state);
                }
            }
        }
        Ok(out)
    }
}
