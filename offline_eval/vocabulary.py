"""Real English words by genre, so the synthetic world's item text means something to a real text encoder.

Each genre of :data:`offline_eval.world.GENRES` has 40 words a title or description in that genre would use;
:data:`GENERIC_WORDS` are 60 words any item might use; :data:`TAG_WORDS` name the world's tags.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "ambient": _words(
        "drone haze drift calm mist ocean breath stillness shimmer glacier meditation float "
        "horizon quiet tide cloud echo dawn serene hush pad texture space airy slow dreamy vapor "
        "lull soft weightless twilight aurora murmur tranquil spacious fog reverie sleep rain "
        "glow"
    ),
    "jazz": _words(
        "saxophone trumpet swing bebop improvisation quartet trio upright bass brushes standard "
        "ballad cool blue note club smoky piano scat groove horn solo syncopation bossa nova "
        "fusion bandleader combo chord changes modal lounge vibraphone trombone clarinet harlem "
        "sideman session riff midnight"
    ),
    "rock": _words(
        "guitar riff amplifier distortion drums anthem stadium power chord loud garage punk "
        "grunge rebel highway thunder fuzz pedal shred encore roadhouse electric band bassline "
        "crash cymbal headbang arena raw wild fire engine stomp rebellion leather tour backbeat "
        "overdrive feedback roar"
    ),
    "hiphop": _words(
        "rap beat rhyme verse flow mixtape sample turntable scratch cypher freestyle street block "
        "hustle crew bars boombap trap hook producer breakbeat emcee lyric battle corner bounce "
        "808 snare kick city rapper diss anthem underground vinyl dj sneakers crown grind remix"
    ),
    "classical": _words(
        "symphony sonata concerto orchestra violin cello opus movement allegro adagio baroque "
        "fugue overture conductor chamber quartet prelude nocturne etude aria opera harpsichord "
        "requiem minuet scherzo philharmonic composer score viola recital maestro cantata "
        "oratorio romantic waltz partita suite bach mozart beethoven"
    ),
    "folk": _words(
        "acoustic banjo fiddle ballad campfire harmonica mandolin storyteller village meadow "
        "river country porch homespun hymn traditional wander valley cabin song autumn harvest "
        "lantern mountain prairie railroad strum singer roots heartland dulcimer jig reel cottage "
        "kin barn orchard creek hollow pine"
    ),
    "electronic": _words(
        "synth techno house bass drop rave club dance sequencer arpeggio modular oscillator "
        "filter kick bpm trance dubstep edm remix festival laser neon pulse loop glitch circuit "
        "warehouse minimal acid breakdown build synthesizer vocoder electro disco strobe "
        "subwoofer digital cyber beatport"
    ),
    "spoken": _words(
        "podcast episode interview story host guest conversation lecture history news comedy "
        "audiobook chapter narrator discussion debate science politics documentary memoir essay "
        "poetry reading talk panel weekly season investigation biography philosophy economics "
        "culture advice commentary journalist author listener question explainer report"
    ),
}
"""40 distinct words per genre (a word may appear in two genres, as in real text)."""

GENERIC_WORDS: tuple[str, ...] = _words(
    "new live official remastered edition vol part one two night day love home time heart light "
    "dark world life dream summer winter road sky gold silver young old first last story moment "
    "journey return forever tonight morning secret memory color wave shadow fire water stone star "
    "moon sun north south deluxe single album track mix version special original classic session"
)
"""60 words that carry no genre."""

TAG_WORDS: tuple[str, ...] = _words(
    "chill upbeat mellow energetic dark bright vintage modern instrumental vocal lofi epic "
    "intimate driving groovy moody"
)
"""Words that name tags (with a genre suffix)."""
