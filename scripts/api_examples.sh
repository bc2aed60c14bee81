#!/usr/bin/env bash
# Prints each curl example of docs/api.md with the real answer of a running service (default: the one
# `make run` starts). Usage: scripts/api_examples.sh [http://127.0.0.1:8000]
set -euo pipefail
URL=${1:-http://127.0.0.1:8000}
show() {  # method path [body]
    local method=$1 path=$2 body=${3:-}
    if [ -n "$body" ]; then
        printf '$ curl -s -X %s %s%s -H "content-type: application/json" -d '"'"'%s'"'"'\n' "$method" "\$DUPQ" "$path" "$body"
        curl -s -w '\n(HTTP %{http_code})\n\n' -X "$method" "$URL$path" -H 'content-type: application/json' -d "$body"
    elif [[ $path == *"?"* ]]; then  # quoted, for the shell's sake of '&'
        printf '$ curl -s -X %s "%s%s"\n' "$method" "\$DUPQ" "$path"
        curl -s -w '\n(HTTP %{http_code})\n\n' -X "$method" "$URL$path"
    else
        printf '$ curl -s -X %s %s%s\n' "$method" "\$DUPQ" "$path"
        curl -s -w '\n(HTTP %{http_code})\n\n' -X "$method" "$URL$path"
    fi
}
show POST /similarity '{"question1": "How old are you?", "question2": "What is your age?"}'
show POST /similarity '{"question1": "Where are you from?", "question2": "Where are you going?"}'
show POST /similarity/batch '{"pairs": [{"question1": "How do I learn Python?", "question2": "What is the best way to learn Python?"}, {"question1": "How do I learn Python?", "question2": "How do I learn Java?"}], "threshold": 0.8}'
show POST /embed '{"questions": ["How old are you?"]}'
show POST /questions '{"questions": [{"id": "q-17", "text": "How do I learn Python?"}, {"text": "Is Rust hard to learn?"}]}'
show GET /questions/q-17
show POST /duplicates '{"question": "How can I learn Python quickly?", "k": 3}'
show POST /duplicates '{"question": "What is the best way to lose weight?", "k": 3, "min_similarity": 0.8}'
show POST /duplicates/batch '{"questions": ["How can I improve my English?", "Why is the sky blue?"], "k": 2}'
show DELETE /questions/q-17
show GET /questions/q-17
# Contract 1.1: a help desk's questions in their own namespace, with metadata.
show POST /questions '{"questions": [{"id": "help-1", "text": "How do I reset my password?", "namespace": "helpdesk", "metadata": {"status": "answered", "product": "web"}}, {"id": "help-2", "text": "I forgot my password, how can I change it?", "namespace": "helpdesk", "metadata": {"status": "open", "product": "app"}}, {"id": "help-3", "text": "How do I delete my account?", "namespace": "helpdesk", "metadata": {"status": "answered", "product": "web"}}]}'
show GET /questions/help-1
show POST /duplicates '{"question": "Where can I change my password?", "namespace": "helpdesk", "k": 2}'
show POST /duplicates '{"question": "Where can I change my password?", "namespace": "helpdesk", "k": 2, "filter": {"status": "answered"}}'
show POST /duplicates '{"question": "Where can I change my password?", "namespace": "helpdesk", "filter": {"product": {"in": ["app", "ios"]}}, "exclude_ids": ["help-1"]}'
show GET '/questions/help-2/duplicates?k=2'
show GET '/questions?namespace=helpdesk&limit=2'
show GET '/export?namespace=helpdesk'
show POST /groups '{"namespace": "helpdesk"}'
show POST /v1/embeddings '{"input": ["How old are you?"], "model": "dupq"}'
show POST /feedback '{"pairs": [{"id1": "help-1", "id2": "help-2", "is_duplicate": true}, {"question1": "How do I reset my password?", "question2": "How do I delete my account?", "is_duplicate": false}]}'
show POST /questions/delete '{"namespace": "helpdesk"}'
show POST /questions '{"questions": [{"text": "How old are you?", "metadata": {"tags": ["a", "b"]}}]}'
show POST /duplicates '{"question": "How old are you?", "filter": {"status": {"gt": 1}}}'
show GET /health
show GET /ready
show GET /info
show POST /similarity '{"question1": "   ", "question2": "What is your age?"}'
show POST /duplicates '{"question": "How old are you?", "k": 0}'
show POST /similarity '{"question1": "How old are you?", "question2": "What is your age?"'
