#!/bin/sh
# make_certs.sh DIR: throwaway test PKI with the openssl CLI, written to DIR:
#   ca.pem / ca.key       a CA
#   server.pem / server.key  a server certificate it signed, naming
#                         localhost and 127.0.0.1 (subjectAltName)
#   other-ca.pem          a CA that signed nothing here (a wrong trust)
#   name-ca.pem, name.pem / name.key  a server certificate naming only
#                         other.example (right CA, wrong name)
# Exit 77 when openssl is missing (the callers skip).
set -e
d=$1
command -v openssl >/dev/null || exit 77
mk_ca() { # NAME
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kvbridge test $1" \
		-keyout "$d/$1.key" -out "$d/$1.pem" >/dev/null 2>&1
}
mk_leaf() { # NAME CA SAN
	openssl req -newkey rsa:2048 -nodes -subj "/CN=kvbridge $1" \
		-keyout "$d/$1.key" -out "$d/$1.csr" >/dev/null 2>&1
	printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$3" >"$d/$1.ext"
	openssl x509 -req -in "$d/$1.csr" -CA "$d/$2.pem" -CAkey "$d/$2.key" -CAcreateserial \
		-days 2 -extfile "$d/$1.ext" -out "$d/$1.pem" >/dev/null 2>&1
}
mk_ca ca
mk_ca other-ca
mk_leaf server ca 'DNS:localhost,IP:127.0.0.1'
mk_leaf name ca 'DNS:other.example'
