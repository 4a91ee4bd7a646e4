"""SCIM 2.0 service (RFC 7643/7644) at /scim/v2: IdPs provision agents; disabling one deprovisions them."""
