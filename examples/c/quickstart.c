/*
 * Maze quickstart: load a model, chat with streaming, print statistics.
 *
 *   cc quickstart.c -Iinclude -Ltarget/release -lmaze -Wl,-rpath,$PWD/target/release -o quickstart
 *   ./quickstart path/to/model.gguf ["your question"]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maze.h"

static bool on_progress(float progress, void *userdata) {
    int *last_percent = userdata;
    int percent = (int)(progress * 100.0f);
    if (percent / 10 != *last_percent / 10) { /* every 10% */
        fprintf(stderr, "\rloading %3d%%", percent);
        if (percent == 100) fprintf(stderr, "\n");
    }
    *last_percent = percent;
    return true; /* false would abort loading */
}

static bool on_text(const char *text, size_t len, void *userdata) {
    (void)userdata;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true; /* false would stop generating */
}

/* Prints the error, frees it, and exits. */
static void die(const char *what, maze_status status, maze_error *error) {
    fprintf(stderr, "%s failed: %s: %s\n", what, maze_status_name(status), maze_error_message(error));
    maze_error_free(error);
    exit(1);
}

int main(int argc, char **argv) {
    const char *model = argc > 1 ? argv[1] : getenv("MAZE_MODEL");
    const char *question = argc > 2 ? argv[2] : "In two sentences, why is the sky blue?";
    if (!model) {
        fprintf(stderr, "usage: %s MODEL.gguf [QUESTION]   (or set MAZE_MODEL)\n", argv[0]);
        return 2;
    }
    printf("maze %s (ABI %u)\n", maze_version(), maze_abi_version());

    /* 1. Load the model. */
    maze_engine_params params = maze_engine_params_default();
    int last_percent = -10;
    params.progress_callback = on_progress;
    params.progress_userdata = &last_percent;
    maze_engine *engine = NULL;
    maze_error *error = NULL;
    maze_status status = maze_engine_new(model, &params, &engine, &error);
    if (status != MAZE_STATUS_OK) die("maze_engine_new", status, error);
    printf("model: %s (%s), vocabulary %u, context %u tokens\n", maze_engine_model_name(engine),
           maze_engine_architecture(engine), maze_engine_vocab_size(engine), maze_engine_context_length(engine));

    /* 2. A session holds one conversation. */
    maze_session *session = NULL;
    status = maze_session_new(engine, &session, &error);
    if (status != MAZE_STATUS_OK) die("maze_session_new", status, error);

    /* 3. Chat, streaming the answer as it is generated. */
    maze_chat_message messages[] = {
        maze_msg("user", question),
    };
    maze_generate_params gen = maze_generate_params_default();
    gen.max_tokens = 128;
    gen.temperature = 0.2f;
    gen.seed = 42; /* same seed + same input = same answer */
    printf("\n> %s\n", question);
    maze_result *result = NULL;
    status = maze_session_chat(session, messages, 1, &gen, on_text, NULL, &result, &error);
    if (status != MAZE_STATUS_OK) die("maze_session_chat", status, error);

    /* 4. The result keeps the full text, tokens and statistics. */
    printf("\n\n[%s] %u prompt tokens, %u generated, first token after %.0f ms, %.1f tokens/s\n",
           maze_finish_reason_name(maze_result_finish_reason(result)), maze_result_prompt_tokens(result),
           maze_result_generated_tokens(result), maze_result_time_to_first_token_ms(result),
           maze_result_tokens_per_second(result));

    maze_result_free(result);

    /* 5. Constrained generation: the output is guaranteed to match a JSON schema. */
    const char *schema =
        "{\"name\": \"city\", \"json_schema\": {\"type\": \"object\", \"properties\": {"
        "\"name\": {\"type\": \"string\", \"maxLength\": 30},"
        "\"country\": {\"type\": \"string\", \"maxLength\": 30},"
        "\"population_millions\": {\"type\": \"number\", \"minimum\": 0, \"maximum\": 50},"
        "\"landmarks\": {\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 30}, \"minItems\": 1, \"maxItems\": 3}},"
        "\"required\": [\"name\", \"country\", \"population_millions\", \"landmarks\"], \"additionalProperties\": false}}";
    maze_constraint *city = NULL;
    status = maze_constraint_from_json(engine, schema, strlen(schema), &city, &error);
    if (status != MAZE_STATUS_OK) die("maze_constraint_from_json", status, error);
    maze_chat_message ask[] = {maze_msg("user", "Describe Paris as a JSON object.")};
    gen.constraints = (const maze_constraint *const *)&city;
    gen.n_constraints = 1;
    gen.max_tokens = 160;
    gen.temperature = 0;
    status = maze_session_chat(session, ask, 1, &gen, NULL, NULL, &result, &error);
    if (status != MAZE_STATUS_OK) die("maze_session_chat (constrained)", status, error);
    printf("\n> %s\n%s\n", "Describe Paris as a JSON object. (constrained by a JSON schema)", maze_result_text(result, NULL));
    printf("validation: %s\n", maze_result_validation_json(result));
    maze_result_free(result);
    maze_constraint_free(city);
    maze_session_free(session);
    maze_engine_free(engine);
    return 0;
}
