#!/usr/bin/env python3
"""Creates the IAM roles the Parameter Store moto test (tests/tests/ssm_moto.rs) signs with, in a
running moto server, assumes each with STS, and prints their session credentials as one JSON
object.

As in setup.py, moto runs with INITIAL_NO_AUTH_ACTION_COUNT equal to `--call-count`'s answer:
these calls go through unauthenticated, every later one is SigV4-verified and checked against
the roles' policies. Retries are off and every request is counted.

Roles (policies given as JSON on the command line, so the test owns them):
  berth-master         --master-policy
  berth-minion         --minion-policy
  berth-master-scoped  --scoped-policy (docs/iam.md's master policy, verbatim)

Usage: ssm_setup.py --call-count
       ssm_setup.py --endpoint URL --master-policy JSON --minion-policy JSON --scoped-policy JSON
"""

import argparse
import datetime
import json
import sys

REGION = "us-east-1"
SETUP_KEY = "AKIAIOSFODNN7EXAMPLE"
SETUP_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ROLES = ["berth-master", "berth-minion", "berth-master-scoped"]
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
    # create_role, put_role_policy, assume_role per role
    return 3 * len(ROLES)


def rfc3339(t):
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--call-count", action="store_true")
    ap.add_argument("--endpoint")
    ap.add_argument("--master-policy")
    ap.add_argument("--minion-policy")
    ap.add_argument("--scoped-policy")
    args = ap.parse_args()
    if args.call_count:
        print(planned_calls())
        return 0
    policies = {
        "berth-master": args.master_policy,
        "berth-minion": args.minion_policy,
        "berth-master-scoped": args.scoped_policy,
    }
    if not args.endpoint or not all(policies.values()):
        ap.error("--endpoint and the three policies are required")

    import boto3
    import botocore.config

    sent = []
    session = boto3.session.Session(
        aws_access_key_id=SETUP_KEY,
        aws_secret_access_key=SETUP_SECRET,
        region_name=REGION,
    )
    session.events.register("before-send", lambda request, **_: sent.append(request.url))
    no_retries = botocore.config.Config(retries={"total_max_attempts": 1})
    iam = session.client("iam", endpoint_url=args.endpoint, config=no_retries)
    sts = session.client("sts", endpoint_url=args.endpoint, config=no_retries)

    credentials = {}
    for role in ROLES:
        json.loads(policies[role])  # a policy that is not JSON fails here, not in moto
        arn = iam.create_role(
            RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST)
        )["Role"]["Arn"]
        iam.put_role_policy(
            RoleName=role, PolicyName="berth-ssm", PolicyDocument=policies[role]
        )
        c = sts.assume_role(RoleArn=arn, RoleSessionName="i-0123456789abcdef0")["Credentials"]
        credentials[role] = {
            "access_key_id": c["AccessKeyId"],
            "secret_access_key": c["SecretAccessKey"],
            "session_token": c["SessionToken"],
            "expiration": rfc3339(c["Expiration"]),
        }

    if len(sent) != planned_calls():
        print(
            f"setup sent {len(sent)} requests but planned {planned_calls()}: fix planned_calls()",
            file=sys.stderr,
        )
        return 1
    json.dump(
        {"region": REGION, "credentials": credentials, "setup_calls": len(sent)},
        sys.stdout,
        indent=1,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
