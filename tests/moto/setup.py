#!/usr/bin/env python3
"""Builds the cluster the moto compatibility suite (tests/tests/moto.rs) discovers, in a running
moto server, and prints what the test needs to mirror it in berth-sim as one JSON object.

The server is started with INITIAL_NO_AUTH_ACTION_COUNT set to `--call-count`'s answer: moto lets
exactly that many calls through unauthenticated (these setup calls, signed with dummy keys moto
does not know) and from then on verifies every SigV4 signature and enforces IAM policies. So the
calls below are counted: retries are off (a retry would be one more unauthenticated call), every
request sent is counted, and the script fails if the count differs from the plan. Its last step
proves that moto now checks: a call signed with a wrong secret key must be refused.

Usage: setup.py --call-count
       setup.py --endpoint http://127.0.0.1:PORT
"""

import argparse
import datetime
import json
import sys

REGION = "us-east-1"
# Dummy keys for the unauthenticated setup phase; moto has no user with them.
SETUP_KEY = "AKIAIOSFODNN7EXAMPLE"
SETUP_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
IMAGE_ID = "ami-0f1e2d3c4b5a69788"
CLUSTER = "seed"

# (name, security group, cluster tag, role tag, private IP, stop after launch)
INSTANCES = [
    ("fed-master", "A", CLUSTER, "master", "172.30.0.246", False),
    ("fed-minion", "A", CLUSTER, "minion", "172.30.0.43", False),
    ("fed-minion-2", "A", CLUSTER, "minion", "172.30.0.11", False),
    # Same VPC and cluster tag, but another security group: not a peer.
    ("other-sg-minion", "B", CLUSTER, "minion", "172.30.0.50", False),
    # The cluster's group, but stopped: not a peer.
    ("stopped-minion", "A", CLUSTER, "minion", "172.30.0.51", True),
    # The cluster's group, another cluster's tag: not a peer.
    ("other-cluster-minion", "A", "other", "minion", "172.30.0.52", False),
]

# Roles the instances' profiles could carry: one allowed what berth needs, one without
# ec2:DescribeTags (the policy an operator forgets when IMDS tags are off).
ROLES = {
    "berth-node": ["ec2:DescribeInstances", "ec2:DescribeTags"],
    "berth-node-no-tags": ["ec2:DescribeInstances"],
}

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def planned_calls():
    """Every request the setup sends before moto starts checking, in order of the code below."""
    vpc_and_subnet = 2
    groups = 2
    launches = len(INSTANCES)
    stops = sum(1 for i in INSTANCES if i[5])
    # create_role, put_role_policy, assume_role per role
    roles = 3 * len(ROLES)
    return vpc_and_subnet + groups + launches + stops + roles


def rfc3339(t):
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--call-count", action="store_true")
    ap.add_argument("--endpoint")
    args = ap.parse_args()
    if args.call_count:
        print(planned_calls())
        return 0
    if not args.endpoint:
        ap.error("--endpoint is required")

    import boto3
    import botocore.config
    import botocore.exceptions

    sent = []

    def count(request, **_):
        sent.append(request.url)

    session = boto3.session.Session(
        aws_access_key_id=SETUP_KEY,
        aws_secret_access_key=SETUP_SECRET,
        region_name=REGION,
    )
    session.events.register("before-send", count)
    no_retries = botocore.config.Config(retries={"total_max_attempts": 1})

    def client(service, **kw):
        return session.client(
            service, endpoint_url=args.endpoint, config=no_retries, **kw
        )

    ec2 = client("ec2")
    iam = client("iam")
    sts = client("sts")

    vpc = ec2.create_vpc(CidrBlock="172.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="172.30.0.0/24")["Subnet"]["SubnetId"]
    groups = {
        "A": ec2.create_security_group(
            GroupName="berth-seed", Description="the cluster's nodes", VpcId=vpc
        )["GroupId"],
        "B": ec2.create_security_group(
            GroupName="other", Description="another workload", VpcId=vpc
        )["GroupId"],
    }

    instances = {}
    for name, group, cluster, role, ip, stop in INSTANCES:
        # One RunInstances per instance: one reservation each, as an autoscaled cluster has.
        inst = ec2.run_instances(
            ImageId=IMAGE_ID,
            InstanceType="t3.small",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            SecurityGroupIds=[groups[group]],
            PrivateIpAddress=ip,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "Name", "Value": name},
                        {"Key": "role", "Value": role},
                        {"Key": "berth:cluster", "Value": cluster},
                    ],
                }
            ],
        )["Instances"][0]
        instances[name] = {
            "instance_id": inst["InstanceId"],
            "private_ip": inst["PrivateIpAddress"],
            "private_dns_name": inst["PrivateDnsName"],
            "security_group": groups[group],
            "tags": {"role": role, "berth:cluster": cluster},
            "state": "stopped" if stop else "running",
        }
        if stop:
            ec2.stop_instances(InstanceIds=[inst["InstanceId"]])

    credentials = {}
    for role, actions in ROLES.items():
        arn = iam.create_role(
            RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST)
        )["Role"]["Arn"]
        iam.put_role_policy(
            RoleName=role,
            PolicyName="berth-discovery",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": actions, "Resource": "*"}
                    ],
                }
            ),
        )
        c = sts.assume_role(RoleArn=arn, RoleSessionName=instances["fed-master"]["instance_id"])[
            "Credentials"
        ]
        credentials[role] = {
            "access_key_id": c["AccessKeyId"],
            "secret_access_key": c["SecretAccessKey"],
            "session_token": c["SessionToken"],
            "expiration": rfc3339(c["Expiration"]),
        }

    if len(sent) != planned_calls():
        print(
            f"setup sent {len(sent)} requests but planned {planned_calls()}: moto would "
            "authenticate the wrong calls; fix planned_calls()",
            file=sys.stderr,
        )
        return 1

    # From here on moto checks. A wrong secret for real role credentials must be refused, or
    # the suite would prove nothing about our signatures.
    good = credentials["berth-node"]
    probe = boto3.client(
        "ec2",
        endpoint_url=args.endpoint,
        region_name=REGION,
        aws_access_key_id=good["access_key_id"],
        aws_secret_access_key=good["secret_access_key"] + "x",
        aws_session_token=good["session_token"],
        config=no_retries,
    )
    try:
        probe.describe_instances()
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] != "AuthFailure":
            print(f"probe with a wrong secret: expected AuthFailure, got {e}", file=sys.stderr)
            return 1
    else:
        print(
            "moto accepted a request signed with a wrong secret key: it is not verifying "
            "signatures (INITIAL_NO_AUTH_ACTION_COUNT not applied?)",
            file=sys.stderr,
        )
        return 1

    json.dump(
        {
            "region": REGION,
            "vpc_id": vpc,
            "subnet_id": subnet,
            "security_groups": groups,
            "instances": instances,
            "credentials": credentials,
            "setup_calls": len(sent),
        },
        sys.stdout,
        indent=1,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
