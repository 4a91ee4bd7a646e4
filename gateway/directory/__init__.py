"""Directory sync over LDAP and Active Directory (issue 6): agents and groups from the directory, disablement
detected within seconds through a change feed (RFC 4533), mass disablements held for an admin's approval."""
