// Compiled by the ctest `result_cannot_be_dropped`, which passes only when
// the compiler refuses this file for the dropped Result (status.h).
#include "kvpool/status.h"

kvpool::Result<int> answer();

void drops_it() { answer(); }
