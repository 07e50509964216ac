"""The single writer of engine and stream records; answers selection and queries."""
