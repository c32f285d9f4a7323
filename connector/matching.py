"""Meta's normalization and SHA-256 rules for ``user_data`` (pure: no I/O, no clock).

The rule is Meta's "Customer Information Parameters" page for the Conversions API.
Meta's ``capi-param-builder`` library is its newest reference implementation and the
older Business SDK normalizer the oldest; where they disagree with the page, the page
wins (the tests name each place).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import phonenumbers

from connector.events import HASHED_KEYS, PLAIN_KEYS, UserData

__all__ = [
    "FromAddress",
    "build_fbc",
    "fbclid_from_url",
    "hash_value",
    "is_hashed",
    "normalize",
    "normalize_user_data",
    "strip_elongation",
    "user_data",
    "violations",
]

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def hash_value(normalized: str) -> str:
    """Lowercase SHA-256 hex digest of the UTF-8 bytes of an already normalized value."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def is_hashed(value: str) -> bool:
    """True for a SHA-256 hex digest (64 hex digits, either case): it must not be hashed again."""
    return _SHA256_HEX.fullmatch(value.strip()) is not None


# --- text helpers ---------------------------------------------------------------------


def _letters_and_digits(value: str) -> str:
    """NFC, lowercase, and only letters, combining marks and digits of any script.

    Meta: "lowercase only with no punctuation, no special characters, and no spaces";
    text in other scripts is fine as UTF-8, and an NFD "é" must hash like an NFC one.
    """
    text = strip_elongation(unicodedata.normalize("NFC", value)).lower()
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] in "LMN")
    # Compose again: lower() can decompose (İ -> i + U+0307), and dropping a character
    # can bring a base letter and its accent together ("e.\u0301" -> "é").
    return unicodedata.normalize("NFC", kept)


#: Elongation marks: they stretch a word for looks and are letters to Unicode (Lm), so a
#: name typed with them would hash unlike the same name typed without. ARABIC TATWEEL
#: (kashida), NKO LAJANYALAN, and the Arabic presentation forms that are a tatweel
#: carrying a mark (U+FE71, U+FE77, ...), which keep only their mark.
_ELONGATION: Final[dict[int, str | None]] = {
    0x0640: None,
    0x07FA: None,
    **{
        code: unicodedata.normalize("NFKD", chr(code)).replace("\u0640", "")
        for code in range(0xFE70, 0xFE80)
        if "\u0640" in unicodedata.normalize("NFKD", chr(code))
    },
}


def strip_elongation(value: str) -> str:
    """``value`` without elongation marks (Arabic tatweel U+0640 and its kin).

    "محـــمد" and "محمد" are one name; Meta's rule keeps only letters, and a tatweel
    only draws a longer stroke between letters
    (U+0640 in https://www.unicode.org/charts/PDF/U0600.pdf: "kashida", "inserted to
    stretch characters").
    """
    return value.translate(_ELONGATION)


def _ascii_key(value: str) -> str:
    """A lookup key for names of places: accents dropped, only a-z left."""
    decomposed = unicodedata.normalize("NFKD", value.lower())
    return "".join(ch for ch in decomposed if "a" <= ch <= "z")


# --- country ------------------------------------------------------------------------

#: ISO 3166-1 alpha-2: every officially assigned code with its English short name.
_ISO_COUNTRIES: Final[dict[str, str]] = {
    "ad": "Andorra",
    "ae": "United Arab Emirates",
    "af": "Afghanistan",
    "ag": "Antigua and Barbuda",
    "ai": "Anguilla",
    "al": "Albania",
    "am": "Armenia",
    "ao": "Angola",
    "aq": "Antarctica",
    "ar": "Argentina",
    "as": "American Samoa",
    "at": "Austria",
    "au": "Australia",
    "aw": "Aruba",
    "ax": "Åland Islands",
    "az": "Azerbaijan",
    "ba": "Bosnia and Herzegovina",
    "bb": "Barbados",
    "bd": "Bangladesh",
    "be": "Belgium",
    "bf": "Burkina Faso",
    "bg": "Bulgaria",
    "bh": "Bahrain",
    "bi": "Burundi",
    "bj": "Benin",
    "bl": "Saint Barthélemy",
    "bm": "Bermuda",
    "bn": "Brunei Darussalam",
    "bo": "Bolivia",
    "bq": "Bonaire, Sint Eustatius and Saba",
    "br": "Brazil",
    "bs": "Bahamas",
    "bt": "Bhutan",
    "bv": "Bouvet Island",
    "bw": "Botswana",
    "by": "Belarus",
    "bz": "Belize",
    "ca": "Canada",
    "cc": "Cocos (Keeling) Islands",
    "cd": "Democratic Republic of the Congo",
    "cf": "Central African Republic",
    "cg": "Congo",
    "ch": "Switzerland",
    "ci": "Côte d'Ivoire",
    "ck": "Cook Islands",
    "cl": "Chile",
    "cm": "Cameroon",
    "cn": "China",
    "co": "Colombia",
    "cr": "Costa Rica",
    "cu": "Cuba",
    "cv": "Cabo Verde",
    "cw": "Curaçao",
    "cx": "Christmas Island",
    "cy": "Cyprus",
    "cz": "Czechia",
    "de": "Germany",
    "dj": "Djibouti",
    "dk": "Denmark",
    "dm": "Dominica",
    "do": "Dominican Republic",
    "dz": "Algeria",
    "ec": "Ecuador",
    "ee": "Estonia",
    "eg": "Egypt",
    "eh": "Western Sahara",
    "er": "Eritrea",
    "es": "Spain",
    "et": "Ethiopia",
    "fi": "Finland",
    "fj": "Fiji",
    "fk": "Falkland Islands",
    "fm": "Micronesia",
    "fo": "Faroe Islands",
    "fr": "France",
    "ga": "Gabon",
    "gb": "United Kingdom",
    "gd": "Grenada",
    "ge": "Georgia",
    "gf": "French Guiana",
    "gg": "Guernsey",
    "gh": "Ghana",
    "gi": "Gibraltar",
    "gl": "Greenland",
    "gm": "Gambia",
    "gn": "Guinea",
    "gp": "Guadeloupe",
    "gq": "Equatorial Guinea",
    "gr": "Greece",
    "gs": "South Georgia and the South Sandwich Islands",
    "gt": "Guatemala",
    "gu": "Guam",
    "gw": "Guinea-Bissau",
    "gy": "Guyana",
    "hk": "Hong Kong",
    "hm": "Heard Island and McDonald Islands",
    "hn": "Honduras",
    "hr": "Croatia",
    "ht": "Haiti",
    "hu": "Hungary",
    "id": "Indonesia",
    "ie": "Ireland",
    "il": "Israel",
    "im": "Isle of Man",
    "in": "India",
    "io": "British Indian Ocean Territory",
    "iq": "Iraq",
    "ir": "Iran",
    "is": "Iceland",
    "it": "Italy",
    "je": "Jersey",
    "jm": "Jamaica",
    "jo": "Jordan",
    "jp": "Japan",
    "ke": "Kenya",
    "kg": "Kyrgyzstan",
    "kh": "Cambodia",
    "ki": "Kiribati",
    "km": "Comoros",
    "kn": "Saint Kitts and Nevis",
    "kp": "North Korea",
    "kr": "South Korea",
    "kw": "Kuwait",
    "ky": "Cayman Islands",
    "kz": "Kazakhstan",
    "la": "Laos",
    "lb": "Lebanon",
    "lc": "Saint Lucia",
    "li": "Liechtenstein",
    "lk": "Sri Lanka",
    "lr": "Liberia",
    "ls": "Lesotho",
    "lt": "Lithuania",
    "lu": "Luxembourg",
    "lv": "Latvia",
    "ly": "Libya",
    "ma": "Morocco",
    "mc": "Monaco",
    "md": "Moldova",
    "me": "Montenegro",
    "mf": "Saint Martin",
    "mg": "Madagascar",
    "mh": "Marshall Islands",
    "mk": "North Macedonia",
    "ml": "Mali",
    "mm": "Myanmar",
    "mn": "Mongolia",
    "mo": "Macao",
    "mp": "Northern Mariana Islands",
    "mq": "Martinique",
    "mr": "Mauritania",
    "ms": "Montserrat",
    "mt": "Malta",
    "mu": "Mauritius",
    "mv": "Maldives",
    "mw": "Malawi",
    "mx": "Mexico",
    "my": "Malaysia",
    "mz": "Mozambique",
    "na": "Namibia",
    "nc": "New Caledonia",
    "ne": "Niger",
    "nf": "Norfolk Island",
    "ng": "Nigeria",
    "ni": "Nicaragua",
    "nl": "Netherlands",
    "no": "Norway",
    "np": "Nepal",
    "nr": "Nauru",
    "nu": "Niue",
    "nz": "New Zealand",
    "om": "Oman",
    "pa": "Panama",
    "pe": "Peru",
    "pf": "French Polynesia",
    "pg": "Papua New Guinea",
    "ph": "Philippines",
    "pk": "Pakistan",
    "pl": "Poland",
    "pm": "Saint Pierre and Miquelon",
    "pn": "Pitcairn",
    "pr": "Puerto Rico",
    "ps": "Palestine",
    "pt": "Portugal",
    "pw": "Palau",
    "py": "Paraguay",
    "qa": "Qatar",
    "re": "Réunion",
    "ro": "Romania",
    "rs": "Serbia",
    "ru": "Russia",
    "rw": "Rwanda",
    "sa": "Saudi Arabia",
    "sb": "Solomon Islands",
    "sc": "Seychelles",
    "sd": "Sudan",
    "se": "Sweden",
    "sg": "Singapore",
    "sh": "Saint Helena, Ascension and Tristan da Cunha",
    "si": "Slovenia",
    "sj": "Svalbard and Jan Mayen",
    "sk": "Slovakia",
    "sl": "Sierra Leone",
    "sm": "San Marino",
    "sn": "Senegal",
    "so": "Somalia",
    "sr": "Suriname",
    "ss": "South Sudan",
    "st": "Sao Tome and Principe",
    "sv": "El Salvador",
    "sx": "Sint Maarten",
    "sy": "Syria",
    "sz": "Eswatini",
    "tc": "Turks and Caicos Islands",
    "td": "Chad",
    "tf": "French Southern Territories",
    "tg": "Togo",
    "th": "Thailand",
    "tj": "Tajikistan",
    "tk": "Tokelau",
    "tl": "Timor-Leste",
    "tm": "Turkmenistan",
    "tn": "Tunisia",
    "to": "Tonga",
    "tr": "Türkiye",
    "tt": "Trinidad and Tobago",
    "tv": "Tuvalu",
    "tw": "Taiwan",
    "tz": "Tanzania",
    "ua": "Ukraine",
    "ug": "Uganda",
    "um": "United States Minor Outlying Islands",
    "us": "United States",
    "uy": "Uruguay",
    "uz": "Uzbekistan",
    "va": "Holy See",
    "vc": "Saint Vincent and the Grenadines",
    "ve": "Venezuela",
    "vg": "British Virgin Islands",
    "vi": "United States Virgin Islands",
    "vn": "Viet Nam",
    "vu": "Vanuatu",
    "wf": "Wallis and Futuna",
    "ws": "Samoa",
    "ye": "Yemen",
    "yt": "Mayotte",
    "za": "South Africa",
    "zm": "Zambia",
    "zw": "Zimbabwe",
}

#: Other ways stores and shoppers write a country; keys are :func:`_ascii_key` forms.
_COUNTRY_ALIASES: Final[dict[str, str]] = {
    # "uk" is exceptionally reserved for GB by ISO and is what people type.
    "uk": "gb",
    "greatbritain": "gb",
    "britain": "gb",
    "england": "gb",
    "scotland": "gb",
    "wales": "gb",
    "northernireland": "gb",
    "usa": "us",
    "unitedstatesofamerica": "us",
    "america": "us",
    "deutschland": "de",
    "espana": "es",
    "italia": "it",
    "nederland": "nl",
    "holland": "nl",
    "osterreich": "at",
    "schweiz": "ch",
    "suisse": "ch",
    "svizzera": "ch",
    "brasil": "br",
    "nippon": "jp",
    "turkey": "tr",
    "czechrepublic": "cz",
    "ivorycoast": "ci",
    "capeverde": "cv",
    "swaziland": "sz",
    "macedonia": "mk",
    "burma": "mm",
    "vietnam": "vn",
    "russianfederation": "ru",
    "korea": "kr",
    "republicofkorea": "kr",
    "brunei": "bn",
    "vatican": "va",
    "vaticancity": "va",
    "macau": "mo",
    "easttimor": "tl",
    "drcongo": "cd",
    "congokinshasa": "cd",
    "congobrazzaville": "cg",
    "republicofthecongo": "cg",
    "palestinianterritories": "ps",
    "saintmartinfrenchpart": "mf",
    "sintmaartendutchpart": "sx",
    # A few alpha-3 codes that stores put in country fields.
    "gbr": "gb",
    "deu": "de",
    "can": "ca",
    "aus": "au",
    "nzl": "nz",
    "irl": "ie",
    "fra": "fr",
    "esp": "es",
    "ita": "it",
    "nld": "nl",
    "jpn": "jp",
    "mex": "mx",
    "bra": "br",
    "che": "ch",
    "aut": "at",
    "bel": "be",
    "swe": "se",
    "nor": "no",
    "dnk": "dk",
    "fin": "fi",
    "pol": "pl",
    "prt": "pt",
    "ind": "in",
    "chn": "cn",
}

_COUNTRY_BY_NAME: Final[dict[str, str]] = {
    **{_ascii_key(name): code for code, name in _ISO_COUNTRIES.items()},
    **_COUNTRY_ALIASES,
}


def _country(value: str) -> str | None:
    key = _ascii_key(value)
    if len(key) == 2:
        return key if key in _ISO_COUNTRIES else _COUNTRY_ALIASES.get(key)
    return _COUNTRY_BY_NAME.get(key)


# --- state --------------------------------------------------------------------------

_US_STATES: Final[dict[str, str]] = {
    "al": "Alabama",
    "ak": "Alaska",
    "az": "Arizona",
    "ar": "Arkansas",
    "ca": "California",
    "co": "Colorado",
    "ct": "Connecticut",
    "de": "Delaware",
    "dc": "District of Columbia",
    "fl": "Florida",
    "ga": "Georgia",
    "hi": "Hawaii",
    "id": "Idaho",
    "il": "Illinois",
    "in": "Indiana",
    "ia": "Iowa",
    "ks": "Kansas",
    "ky": "Kentucky",
    "la": "Louisiana",
    "me": "Maine",
    "md": "Maryland",
    "ma": "Massachusetts",
    "mi": "Michigan",
    "mn": "Minnesota",
    "ms": "Mississippi",
    "mo": "Missouri",
    "mt": "Montana",
    "ne": "Nebraska",
    "nv": "Nevada",
    "nh": "New Hampshire",
    "nj": "New Jersey",
    "nm": "New Mexico",
    "ny": "New York",
    "nc": "North Carolina",
    "nd": "North Dakota",
    "oh": "Ohio",
    "ok": "Oklahoma",
    "or": "Oregon",
    "pa": "Pennsylvania",
    "ri": "Rhode Island",
    "sc": "South Carolina",
    "sd": "South Dakota",
    "tn": "Tennessee",
    "tx": "Texas",
    "ut": "Utah",
    "vt": "Vermont",
    "va": "Virginia",
    "wa": "Washington",
    "wv": "West Virginia",
    "wi": "Wisconsin",
    "wy": "Wyoming",
    # Territories and the armed forces "states" carry ANSI/USPS codes too.
    "as": "American Samoa",
    "gu": "Guam",
    "mp": "Northern Mariana Islands",
    "pr": "Puerto Rico",
    "vi": "Virgin Islands",
    "um": "United States Minor Outlying Islands",
    "aa": "Armed Forces Americas",
    "ae": "Armed Forces Europe",
    "ap": "Armed Forces Pacific",
}

_CA_PROVINCES: Final[dict[str, str]] = {
    "ab": "Alberta",
    "bc": "British Columbia",
    "mb": "Manitoba",
    "nb": "New Brunswick",
    "nl": "Newfoundland and Labrador",
    "ns": "Nova Scotia",
    "nt": "Northwest Territories",
    "nu": "Nunavut",
    "on": "Ontario",
    "pe": "Prince Edward Island",
    "qc": "Quebec",
    "sk": "Saskatchewan",
    "yt": "Yukon",
}

_STATE_BY_NAME: Final[dict[str, dict[str, str]]] = {
    country: {
        **{_ascii_key(name): code for code, name in table.items()},
        **{code: code for code in table},
    }
    for country, table in (("us", _US_STATES), ("ca", _CA_PROVINCES))
}
_STATE_BY_NAME["us"].update({"washingtondc": "dc"})
_STATE_BY_NAME["ca"].update({"newfoundland": "nl", "pei": "pe", "yukonterritory": "yt"})

_SUBDIVISION: Final = re.compile(r"([a-z]{2})-([a-z0-9]{1,3})")


def _state(value: str, country: str | None) -> str | None:
    text = value.strip().lower()
    # ISO 3166-2 form ("US-CA"): the part after the country is the state's code.
    match = _SUBDIVISION.fullmatch(text)
    prefix = _country(match.group(1)) if match else None
    if match and prefix is not None and country in (None, prefix):
        country, text = prefix, match.group(2)
    if country in _STATE_BY_NAME:
        return _STATE_BY_NAME[country].get(_ascii_key(text))
    if country is None:
        # Without a country, a US state or Canadian province name is still recognisable.
        key = _ascii_key(text)
        if len(key) > 2:
            for table in _STATE_BY_NAME.values():
                if key in table:
                    return table[key]
    return _letters_and_digits(text) or None


# --- zip / postcode -----------------------------------------------------------------

_POSTCODE_FORMATS: Final[dict[str, re.Pattern[str]]] = {
    "us": re.compile(r"\d{5}"),
    "ca": re.compile(r"[a-z]\d[a-z]\d[a-z]\d"),
    "gb": re.compile(r"[a-z]{1,2}\d[a-z\d]?\d[a-z]{2}"),
    "de": re.compile(r"\d{5}"),
    "jp": re.compile(r"\d{7}"),
}
_US_ZIP_PLUS_4: Final = re.compile(r"\d{5}-\d{4}")


def _zip(value: str, country: str | None) -> str | None:
    # NFKC turns full-width digits and dashes (common in Japanese input) into ASCII.
    text = unicodedata.normalize("NFKC", value).strip().lower()
    if country is None and _US_ZIP_PLUS_4.fullmatch(text):
        country = "us"
    compact = "".join(ch for ch in text if ch.isascii() and ch.isalnum())
    if country == "us" and compact.isdigit() and len(compact) >= 5:
        # Meta: "Use only the first 5 digits for U.S. zip codes" (ZIP+4 -> ZIP).
        compact = compact[:5]
    pattern = _POSTCODE_FORMATS.get(country or "")
    if pattern is not None:
        return compact if pattern.fullmatch(compact) else None
    return compact if len(compact) >= 2 else None


# --- phone --------------------------------------------------------------------------

_PHONE_NOISE: Final = re.compile(r"[\s\-().\/\u00a0]")


#: Numbers already parsed while normalizing one ``user_data``, by (text, region): an order's
#: phones are read with each of its countries in turn, and every number is read once more to
#: check it reads the same, so the same text would otherwise be parsed again and again.
_ParsedPhones = dict[tuple[str, str | None], phonenumbers.PhoneNumber | None]


def _parse_phone(
    text: str, region: str | None, parsed: _ParsedPhones
) -> phonenumbers.PhoneNumber | None:
    key = (text, region)
    if key in parsed:
        return parsed[key]
    try:
        number: phonenumbers.PhoneNumber | None = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        number = None
    parsed[key] = number
    return number


def _phone(
    value: str, country: str | None, parsed: _ParsedPhones | None = None
) -> str | None:
    # The parsed numbers are never changed, only read: one parse serves every reading.
    parsed = {} if parsed is None else parsed
    # Any script's digits (full-width, Arabic-Indic, ...) as ASCII, so "00" is seen as such.
    text = "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in value
    )
    text = text.strip()
    compact = _PHONE_NOISE.sub("", text)
    if compact.startswith("00"):
        # "00" is the international prefix in most of the world: the number carries its code.
        text = "+" + compact[2:]
    elif compact.startswith("+"):
        text = compact  # "(+44) 7911 123456"
    region = country.upper() if country else None
    digits = "".join(ch for ch in compact if ch.isdecimal())
    number = None
    if text.startswith("+"):
        explicit = _parse_phone(text, None, parsed)
        if explicit is not None and phonenumbers.is_possible_number(explicit):
            number = explicit
    elif region is None:
        # No region to fall back on: only digits that form a valid number with their
        # leading country code (Meta's normalized form) can be trusted.
        guessed = _parse_phone("+" + digits, None, parsed) if digits else None
        if guessed is not None and phonenumbers.is_valid_number(guessed):
            number = guessed
    else:
        local = _parse_phone(text, region, parsed)
        if local is not None and phonenumbers.is_valid_number(local):
            number = local
        else:
            # Digits that already start with a country code (Meta's normalized form).
            international = _parse_phone("+" + digits, None, parsed) if digits else None
            if international is not None and phonenumbers.is_valid_number(
                international
            ):
                number = international
            elif local is not None and phonenumbers.is_possible_number(local):
                number = local
    if number is None:
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    # E.164 allows at most 15 digits; phonenumbers' "possible" lengths go beyond it.
    if len(e164) > 15:
        return None
    # A national prefix right after the country code ("+31 0...") is dropped by the parser,
    # so such a number would lose a digit every time it is read again: not a real number.
    again = _parse_phone("+" + e164, None, parsed)
    if (
        again is None
        or phonenumbers.format_number(again, phonenumbers.PhoneNumberFormat.E164)[1:]
        != e164
    ):
        return None
    return e164


# --- email, gender, date of birth ---------------------------------------------------

#: The local part: dot-separated runs of RFC 5322 "atext" (letters of any script allowed,
#: as Meta hashes UTF-8). Meta's Business SDKs test the same "RFC 2822 approximation".
_EMAIL_LOCAL: Final = re.compile(r"[\w!#$%&'*+/=?^`{|}~-]+(\.[\w!#$%&'*+/=?^`{|}~-]+)*")
#: A domain label: letters (IDN) or digits, hyphens only inside, at most 63 characters.
_EMAIL_LABEL: Final = re.compile(r"[^\W_](?:[\w-]{0,61}[^\W_])?")


def _email(value: str) -> str | None:
    text = unicodedata.normalize("NFC", value.strip().lower())
    if len(text) > 254 or text.count("@") != 1:
        return None
    local, _, domain = text.partition("@")
    labels = domain.split(".")
    if (
        len(local) > 64
        or _EMAIL_LOCAL.fullmatch(local) is None
        or len(labels) < 2
        or not all(_EMAIL_LABEL.fullmatch(label) for label in labels)
        or "_" in domain
        # A top-level domain is never all digits ("a@1.2" is an address, not a mailbox).
        or labels[-1].isdigit()
    ):
        return None
    return text


_GENDERS: Final[dict[str, str]] = {
    "m": "m",
    "male": "m",
    "man": "m",
    "masculine": "m",
    "mr": "m",
    "männlich": "m",
    "homme": "m",
    "masculin": "m",
    "hombre": "m",
    "masculino": "m",
    "f": "f",
    "female": "f",
    "woman": "f",
    "feminine": "f",
    "mrs": "f",
    "ms": "f",
    "miss": "f",
    "weiblich": "f",
    "femme": "f",
    "féminin": "f",
    "mujer": "f",
    "femenino": "f",
    "feminino": "f",
}


def _gender(value: str) -> str | None:
    key = unicodedata.normalize("NFC", value).strip().lower().rstrip(".")
    return _GENDERS.get(key)


_MONTHS: Final = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
_DATE_TOKEN: Final = re.compile(r"\d+|[a-z]+")
#: Meta: "Year: Use the YYYY format from 1900 to current year" (the upper bound needs a clock).
_MIN_BIRTH_YEAR: Final = 1900


def _birth_date(value: str) -> str | None:
    text = value.strip().lower()
    tokens = _DATE_TOKEN.findall(text)
    numbers = [t for t in tokens if t.isdigit()]
    months = [
        _MONTHS.index(t[:3]) + 1 for t in tokens if not t.isdigit() and t[:3] in _MONTHS
    ]
    ymd: tuple[int, int, int] | None = None
    if len(numbers) == 1 and len(numbers[0]) == 8 and not months:
        n = numbers[0]
        ymd = int(n[:4]), int(n[4:6]), int(n[6:])
    elif len(months) == 1 and len(numbers) == 2:
        # "16 February 1997", "Feb 16, 1997", "1997 Feb 16"
        year, day = (
            (numbers[0], numbers[1])
            if len(numbers[0]) == 4
            else (numbers[1], numbers[0])
        )
        if len(year) == 4 and len(day) <= 2:
            ymd = int(year), months[0], int(day)
    elif len(numbers) >= 3 and not months and all(len(n) <= 4 for n in numbers[:3]):
        a, b, c = numbers[:3]
        if len(a) == 4 and len(b) <= 2 and len(c) <= 2:
            ymd = int(a), int(b), int(c)  # 1997-02-16, and ISO date-times
        elif len(numbers) == 3 and len(c) == 4 and len(a) <= 2 and len(b) <= 2:
            # Day first only when it cannot be a month; otherwise US order, as Meta's
            # own example "2/16/1997" and the param builder read it.
            ymd = (int(c), int(b), int(a)) if int(a) > 12 else (int(c), int(a), int(b))
    if ymd is None or ymd[0] < _MIN_BIRTH_YEAR:
        return None
    try:
        born = date(*ymd)
    except ValueError:
        return None
    return born.strftime("%Y%m%d")


# --- unhashed keys ------------------------------------------------------------------


def _ip(value: str) -> str | None:
    text = value.strip()
    if "," in text:
        # An X-Forwarded-For chain ("client, proxy1, proxy2") a store recorded as it came:
        # the shopper is the first public address in it.
        return next(filter(None, map(_ip, text.split(","))), None)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # Only a public address can be the shopper's browser: loopback, private (RFC 1918),
    # carrier-grade NAT, link-local and documentation ranges are a store's proxy, a
    # container network or a placeholder, and would match the event to nobody.
    if not address.is_global or address.is_multicast:
        return None
    return str(address)


def _text(value: str) -> str | None:
    return value.strip() or None


#: ``fb.<subdomain index>.<creation time, ms>.<payload>[.<appendix>]``: Meta's fbc/fbp
#: format; the appendix is what Meta's capi-param-builder adds: a 2-character language
#: token (legacy) or 8 base64url characters. The fbp payload is a random integer.
_FBC: Final = re.compile(
    r"fb\.[0-9]\.[0-9]{1,13}\.[A-Za-z0-9_-]+(\.(AQ|Ag|Aw|BA|BQ|Bg|[A-Za-z0-9_-]{8}))?"
)
_FBP: Final = re.compile(
    r"fb\.[0-9]\.[0-9]{1,13}\.[0-9]{1,20}(\.(AQ|Ag|Aw|BA|BQ|Bg|[A-Za-z0-9_-]{8}))?"
)


def _cookie(value: str, shape: re.Pattern[str]) -> str | None:
    # An _fbc/_fbp value goes to Meta exactly as the browser stored it: never rebuilt,
    # never lower-cased (the fbclid inside it is case-sensitive).
    text = value.strip()
    return text if shape.fullmatch(text) else None


def _external_id(value: str) -> str | None:
    # Trim and lowercase like the param builder (which also drops inner whitespace), so
    # an id hashed here matches the same id sent by another channel.
    return "".join(value.split()).lower() or None


# --- public API ---------------------------------------------------------------------

_Normalizer = Callable[[str, str | None], str | None]

_NORMALIZERS: Final[dict[str, _Normalizer]] = {
    "em": lambda v, c: _email(v),
    "ph": _phone,
    "fn": lambda v, c: _letters_and_digits(v) or None,
    "ln": lambda v, c: _letters_and_digits(v) or None,
    "ge": lambda v, c: _gender(v),
    "db": lambda v, c: _birth_date(v),
    "ct": lambda v, c: _letters_and_digits(v) or None,
    "st": _state,
    "zp": _zip,
    "country": lambda v, c: _country(v),
    "external_id": lambda v, c: _external_id(v),
    "client_ip_address": lambda v, c: _ip(v),
    "client_user_agent": lambda v, c: _text(v),
    "fbc": lambda v, c: _cookie(v, _FBC),
    "fbp": lambda v, c: _cookie(v, _FBP),
}


def normalize(field: str, value: str, *, country: str | None = None) -> str | None:
    """Meta's normalized form of one ``user_data`` value, or None if it cannot be valid.

    ``country`` is the default region for a phone without a country code and tells
    postcodes and states which national rules apply. An already hashed value of a
    hashed key comes back lower-cased, untouched otherwise. Raises ValueError only
    for a ``field`` that is not one of Meta's keys.
    """
    return _normalize(field, value, country, None)


def _normalize(
    field: str, value: str, country: str | None, parsed: _ParsedPhones | None
) -> str | None:
    try:
        normalizer = _NORMALIZERS[field]
    except KeyError:
        raise ValueError(f"not a user_data key: {field!r}") from None
    if field in HASHED_KEYS and is_hashed(value):
        return value.strip().lower()
    hint = _country(country) if country else None
    if field == "ph":
        return _phone(value, hint, parsed)
    return normalizer(value, hint)


_COUNTRY_DEPENDENT: Final = frozenset({"ph", "st", "zp"})


@dataclass(frozen=True)
class FromAddress:
    """A raw value read from a postal address, with that address's country as recorded.

    A phone, state or postcode means something only in its own country: an order may
    bill to Germany and ship to the United States, and the shipping phone
    ``(212) 555-0147`` is a New York number, not a German or Moroccan one. Adapters
    wrap such values so :func:`normalize_user_data` reads each with its own country;
    ``country`` may be a code or a name as the store recorded it, or None.
    """

    value: str | int | None
    country: str | None = None


def _values(key: str, raw: Any) -> list[tuple[str, str | None]]:
    """Each value as ``(text, country recorded with it or None)``."""
    if raw is None:
        return []
    items = list(raw) if isinstance(raw, list | tuple) else [raw]
    rv: list[tuple[str, str | None]] = []
    for item in items:
        context: str | None = None
        if isinstance(item, FromAddress):
            if not (item.country is None or isinstance(item.country, str)):
                raise TypeError(f"user_data[{key!r}] country must be a string")
            context, item = item.country, item.value
        if item is None:
            continue
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise TypeError(
                f"user_data[{key!r}] takes strings, not {type(item).__name__}"
            )
        # Platforms send numeric customer ids as JSON numbers.
        rv.append((str(item), context))
    return rv


def normalize_user_data(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Meta's ``user_data`` object from raw values keyed by Meta's names.

    Hashed keys become lists of distinct lowercase SHA-256 digests in input order,
    plain keys the first valid string; empty and invalid values are dropped. Each
    value is a string, a number (ids), None, a :class:`FromAddress`, or a list or tuple
    of those. A :class:`FromAddress` with a known country is read with that country's
    rules alone; other phones, states and postcodes with the ``country`` values in turn.
    ``client_ip_address`` takes the first public address: a private, loopback or
    reserved one is a proxy's, never the shopper's. Rules: Meta's customer information
    parameters,
    https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters

    Raises:
        ValueError: a key that is not one of Meta's ``user_data`` keys.
        TypeError: a value of another type (a caller's bug, not a shopper's typo).
    """
    unknown = set(raw) - set(_NORMALIZERS)
    if unknown:
        raise ValueError(f"not user_data keys: {sorted(unknown)!r}")
    values = {key: _values(key, raw[key]) for key in raw}
    # Values not tied to an address (an order's own phone) are read with the order's
    # countries in turn, the first (billing) first: what its rules refuse, the next reads.
    countries: list[str | None] = []
    for code in (_country(v) for v, _ in values.get("country", ())):
        if code is not None and code not in countries:
            countries.append(code)
    country = countries[0] if countries else None
    parsed: _ParsedPhones = {}
    rv: dict[str, Any] = {}
    for key in HASHED_KEYS:
        digests: list[str] = []
        for value, context in values.get(key, ()):
            own = _country(context) if context else None
            if key in _COUNTRY_DEPENDENT and own is not None:
                normalized = _normalize(key, value, own, parsed)
            elif key in _COUNTRY_DEPENDENT:
                normalized = next(
                    filter(
                        None,
                        (
                            _normalize(key, value, c, parsed)
                            for c in countries or [None]
                        ),
                    ),
                    None,
                )
            else:
                normalized = _normalize(key, value, country, parsed)
            if normalized is None:
                continue
            digest = normalized if is_hashed(normalized) else hash_value(normalized)
            if digest not in digests:
                digests.append(digest)
        if digests:
            rv[key] = digests
    for key in PLAIN_KEYS:
        for value, _ in values.get(key, ()):
            normalized = normalize(key, value, country=country)
            if normalized is not None:
                rv[key] = normalized
                break
    return rv


def user_data(raw: Mapping[str, Any]) -> UserData:
    """The canonical :class:`UserData` for raw values keyed by Meta's names."""
    return UserData.from_meta(normalize_user_data(raw))


def violations(data: Mapping[str, Any]) -> list[str]:
    """Every way a ``user_data`` object breaks this module's rules; empty when it keeps them.

    Hashed keys must be non-empty lists of distinct lowercase SHA-256 digests; plain keys
    strings this module would send unchanged (a public IP, a well-shaped fbc/fbp, a
    trimmed user agent). Unknown keys are violations too. For checks and tests.
    """
    rv: list[str] = []
    for key, value in data.items():
        if key in HASHED_KEYS:
            if not isinstance(value, list) or not value:
                rv.append(f"{key}: not a non-empty list")
                continue
            if len(set(value)) != len(value):
                rv.append(f"{key}: repeated digests")
            for digest in value:
                if not isinstance(digest, str) or not (
                    is_hashed(digest) and digest == digest.lower()
                ):
                    rv.append(f"{key}: not a lowercase SHA-256 digest")
        elif key in PLAIN_KEYS:
            if not isinstance(value, str) or normalize(key, value) != value:
                rv.append(f"{key}: not a value Meta accepts as is")
        else:
            rv.append(f"{key}: not a user_data key")
    return rv


def build_fbc(fbclid: str, created_at: datetime) -> str:
    """``fb.1.<ms>.<fbclid>``: an ``fbc`` for a click first seen at ``created_at``.

    Subdomain index 1 is what Meta asks of servers that build the value themselves;
    the fbclid's case is kept (Meta: "ClickID value is case sensitive").
    """
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    click_id = fbclid.strip()
    if not click_id:
        raise ValueError("fbclid is empty")
    # Integer division of timedeltas: a float timestamp can be off by a millisecond.
    millis = (created_at - _EPOCH) // timedelta(milliseconds=1)
    return f"fb.1.{millis}.{click_id}"


def fbclid_from_url(url: str) -> str | None:
    """The ``fbclid`` query parameter of a URL or relative path, case kept; None if absent."""
    try:
        query = urlsplit(url.strip()).query
    except ValueError:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        # Landing URLs copied out of HTML arrive with "&amp;" between parameters.
        if name.removeprefix("amp;") == "fbclid" and value.strip():
            return value.strip()
    return None
